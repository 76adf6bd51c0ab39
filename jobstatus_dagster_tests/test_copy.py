"""The COPY text the writer builds round-trips every value through Postgres unchanged (R20:
hostile strings are data, not syntax), including NULLs, escapes and int columns made float."""

import numpy as np
import pandas as pd
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstatus_dagster.io.writer import copy_text

HOSTILE = [
    "plain",
    "",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "quote'\"; DROP TABLE jobs; --",
    "ünïcødé ✓ 漢字",
    "x" * 5000,
]


def _round_trip(conn: sa.Connection, frame: pd.DataFrame) -> list[tuple]:
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE copy_probe (source_id bigint, notes text, event_time timestamp,"
            " state_based boolean, printed_count int) ON COMMIT DROP"
        )
    )
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy("COPY copy_probe FROM STDIN") as copy:
        copy.write(copy_text(frame, list(frame.columns)))
    return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM copy_probe ORDER BY source_id"))]


def test_values_round_trip_including_nulls_and_escapes(engines) -> None:
    jm, _ = engines
    n = len(HOSTILE)
    frame = pd.DataFrame(
        {
            "source_id": np.arange(n, dtype="int64"),
            "notes": pd.Series(HOSTILE, dtype="string").where(np.arange(n) != 1, None),
            "event_time": pd.Series(
                [pd.Timestamp("2026-11-29 01:02:03.456789")] * (n - 1) + [pd.NaT]
            ),
            "state_based": pd.array([True, False, None] * (n // 3) + [True] * (n % 3)),
            # a left join turned this integer column float; it must still arrive as an integer
            "printed_count": pd.Series([3.0, np.nan] * (n // 2) + [1.0] * (n % 2)),
        }
    )
    with jm.begin() as conn:
        rows = _round_trip(conn, frame)
    assert [r[1] for r in rows] == [None if i == 1 else v for i, v in enumerate(HOSTILE)]
    assert rows[0][2] == pd.Timestamp("2026-11-29 01:02:03.456789").to_pydatetime()
    assert rows[-1][2] is None
    assert [r[3] for r in rows[:3]] == [True, False, None]
    assert [r[4] for r in rows[:2]] == [3, None]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        # Text as Postgres can hold it: valid UTF-8 (no lone surrogates), no NUL.
        st.one_of(
            st.none(), st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"))
        ),
        min_size=1,
        max_size=20,
    )
)
def test_any_text_round_trips(engines, texts: list[str | None]) -> None:
    jm, _ = engines
    n = len(texts)
    frame = pd.DataFrame(
        {
            "source_id": np.arange(n, dtype="int64"),
            "notes": pd.Series(texts, dtype=object),
            "event_time": pd.Series([pd.NaT] * n, dtype="datetime64[us]"),
            "state_based": [True] * n,
            "printed_count": [0] * n,
        }
    )
    with jm.begin() as conn:
        rows = _round_trip(conn, frame)
    assert [r[1] for r in rows] == texts
