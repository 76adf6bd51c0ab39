"""R10–R13 as pure functions of frames: no database, no Dagster."""

from datetime import datetime, timedelta

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from jobstatus_dagster.core.plan import RETRYABLE_REASONS, Window, failure_rows
from jobstatus_dagster.core.print_status import (
    compute_print_plan,
    count_note,
    expand_to_files,
    normalise_status,
    print_status,
    validate_events,
)
from jobstatus_dagster.core.projection import project_impositions

NOW = datetime(2026, 11, 28, 12, 0)


# R11 as explicit cases: (printed, aborted, total) -> status.
R11_CASES = [
    ((5, 0, 5), "completed"),
    ((1, 0, 1), "completed"),
    ((3, 1, 5), "partial"),  # the R12 example: "3 of 5 files printed, 1 aborted"
    ((4, 1, 5), "partial"),  # every file accounted for, one aborted: still not completed
    ((1, 0, 2), "partial"),
    ((0, 1, 5), "aborted"),
    ((0, 5, 5), "aborted"),
    ((0, 0, 5), None),  # nothing printed or aborted yet
    ((0, 0, 0), None),  # no files: nothing to report (not "0 of 0 printed = completed")
]


def test_r11_status_table() -> None:
    for counts, expected in R11_CASES:
        assert print_status(*counts) == expected, counts


def _r11_by_the_letter(printed: int, aborted: int, total: int) -> str | None:
    """R11's four clauses as written; they must be exclusive and exhaustive for valid counts."""
    clauses = {
        "completed": total > 0 and printed == total,
        "partial": 0 < printed < total,
        "aborted": printed == 0 and aborted > 0,
    }
    holding = [status for status, holds in clauses.items() if holds]
    assert len(holding) <= 1, (printed, aborted, total, holding)
    return holding[0] if holding else None  # "otherwise no print status yet"


def test_r11_status_follows_the_counts() -> None:
    """Every valid (printed, aborted, total) up to 40 files, against R11 read clause by clause."""
    for total in range(41):
        for printed in range(total + 1):
            for aborted in range(total - printed + 1):
                assert print_status(printed, aborted, total) == _r11_by_the_letter(
                    printed, aborted, total
                ), (printed, aborted, total)


def test_r12_note_says_why() -> None:
    assert count_note(3, 1, 5) == "3 of 5 files printed, 1 aborted"
    assert count_note(5, 0, 5) == "5 of 5 files printed"


@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=20))
def test_r10_status_normalisation_never_crashes(values: list[str | None]) -> None:
    normalised = normalise_status(pd.Series(values, dtype="object"))
    assert set(normalised.dropna()) <= {"PRINTED", "ABORTED"}


def _events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["source_id", "imposition_id", "status", "marker", "event_time"]
    )
    return frame.assign(kind="window", marker=frame["marker"].astype("Int64"))


def test_r10_r11_plan_from_frames() -> None:
    mapping = pd.DataFrame(
        {
            "imposition_id": ["A", "A", "B", "C"],
            "file_id": [
                "FILE_1_Labex_1_2_1",
                "FILE_1_Labex_1_2_2",
                "FILE_1_Labex_1_2_2",  # file 2 is reprinted in B
                "FILE_1_Labex_1_2_3",
            ],
        },
        dtype="string",
    )
    raw = _events(
        [
            (1, "A", "aborted", 10, NOW),
            (2, "B", "PRINTED", 11, NOW + timedelta(minutes=1)),
            (3, "A", "PRINTED", 12, None),
        ]
    )
    events, failures = validate_events(raw, NOW + timedelta(hours=1))
    assert failures.empty
    event_files, file_failures = expand_to_files(events, mapping, "Labex")
    assert file_failures.empty
    job_files = mapping.assign(job_id="1_2", version_tag="1")
    plan = compute_print_plan(
        Window("print_os", 9, 12),
        events,
        event_files,
        job_files,
        events[["source_id", "imposition_id", "status", "marker", "event_time"]],
        failures,
        raw[["source_id", "marker", "kind"]],
    )
    audit = plan.attributions.set_index("source_id")
    # After event 1 both of A's files are aborted; after 2 the reprint printed file 2.
    assert audit.loc[1, ["printed_count", "aborted_count", "total_count"]].tolist() == [0, 2, 3]
    assert audit.loc[2, ["printed_count", "aborted_count"]].tolist() == [1, 1]
    assert audit.loc[3, "status"] == "partial"  # file 3 (imposition C) never printed
    (state,) = plan.print_state.itertuples()
    assert (state.status, state.notes, state.highest) == ("partial", "2 of 3 files printed", True)
    # R14: the missing event time became the processing time and is the latest event.
    assert state.source_id == 3 and state.event_time == NOW + timedelta(hours=1)
    touched = plan.imposition_attributions[["imposition_id", "operation"]]
    imposition, withdrawn = project_impositions(touched, plan.imposition_attributions)
    imposition = imposition.set_index("imposition_id")
    assert withdrawn.empty
    assert imposition.loc["A", "status"] == "completed" and imposition.loc["A", "source_id"] == 3


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(max_size=8)),
            st.one_of(st.none(), st.sampled_from(["PRINTED", "aborted", "x", ""])),
            st.one_of(st.none(), st.integers(-(2**62), 2**62)),
        ),
        max_size=15,
    )
)
def test_r20_hostile_rows_either_validate_or_become_failures(rows: list[tuple]) -> None:
    raw = _events(
        [(i, name, status, marker, None) for i, (name, status, marker) in enumerate(rows)]
    )
    valid, failures = validate_events(raw, NOW)
    assert set(valid["source_id"]).isdisjoint(failures["source_id"])
    assert set(valid["source_id"]) | set(failures["source_id"]) == set(range(len(rows)))


def test_r20_foreign_file_is_recorded_once_per_file_id_malformed_once_per_event() -> None:
    events = _events(
        [
            (11, "A", "PRINTED", 1, NOW),
            (12, "A", "PRINTED", 2, NOW),
            (13, "B", "PRINTED", 3, NOW),
        ]
    )
    mapping = pd.DataFrame(
        {
            "imposition_id": ["A", "A", "A", "B", "B"],
            "file_id": [
                "FILE_1_Labex_1_2_1",
                "FILE_1_Acme_4604_5889",
                "garbage.pdf",
                "FILE_1_Acme_4604_5889\n",  # the same foreign id, padded (R4)
                "FILE_1_LABEX_1_2_2",  # our token but for case: malformed, not foreign
            ],
        }
    )
    event_files, failures = expand_to_files(events, mapping, "Labex")
    assert set(event_files["file_id"]) == {"FILE_1_Labex_1_2_1"}
    rows = sorted(
        failures[["source_type", "source_id", "reason", "subject"]].itertuples(index=False)
    )
    assert [tuple(r) for r in rows] == [
        ("imposition_file_mapping", 0, "foreign_file", "FILE_1_Acme_4604_5889"),
        ("print_os", 11, "bad_file_id", "garbage.pdf"),
        ("print_os", 12, "bad_file_id", "garbage.pdf"),
        ("print_os", 13, "bad_file_id", "FILE_1_LABEX_1_2_2"),
    ]
    foreign = failures[failures["reason"] == "foreign_file"].iloc[0]
    assert not foreign["retryable"] and "customer Acme, not Labex" in foreign["detail"]


def test_r20_missing_rows_and_operations_without_code_are_retryable() -> None:
    assert {"missing_operation_row", "unmapped_operation"} <= RETRYABLE_REASONS
    frame = pd.DataFrame({"source_id": [1, 2, 3]})
    reasons = pd.Series(["missing_operation_row", "unmapped_operation", "bad_file_id"])
    rows = failure_rows(frame, "scanner", reasons, "", "")
    assert rows["retryable"].tolist() == [True, True, False]
