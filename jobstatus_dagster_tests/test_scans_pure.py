"""R5–R7 parsers, property-based: arbitrary text and JSON never crash them."""

import json

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from jobstatus_dagster.core.scans import (
    choose_runlists,
    classify_codes,
    normalise_operation,
    parse_operations,
    scan_operations,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(json_values)
def test_r7_arbitrary_json_never_crashes_and_always_explains(value) -> None:
    parsed = parse_operations(json.dumps(value))
    assert all(name == normalise_operation(name) and name for name in parsed.names)
    if not parsed.names:
        # Nothing usable: either a recorded problem or a shape that genuinely names nothing.
        assert parsed.problems or value in ({}, []) or isinstance(value, dict | list)


@given(st.text(max_size=60))
def test_r7_arbitrary_text_never_crashes(raw: str) -> None:
    parsed = parse_operations(raw)
    assert isinstance(parsed.names, tuple) and isinstance(parsed.problems, tuple)


@given(
    st.lists(json_values, max_size=6), st.sets(st.sampled_from(["coating", "kiss_cut", "print"]))
)
def test_r7_r20_every_scan_yields_operations_or_a_recorded_reason(values, known) -> None:
    scans = pd.DataFrame(
        {"source_id": range(len(values)), "operations_json": [json.dumps(v) for v in values]}
    )
    ops, failures = scan_operations(scans, set(known))
    for source_id in range(len(values)):
        assert source_id in set(ops["source_id"]) or source_id in set(failures["source_id"])
    assert set(ops["operation"]) <= set(known)


def test_r7_the_listed_shapes() -> None:
    assert parse_operations('{"coating": true, "kiss_cut": false}').names == ("coating",)
    assert parse_operations('["coating", "kiss_cut"]').names == ("coating", "kiss_cut")
    assert parse_operations('[{"operation": "coating"}, {"name": "kiss_cut"}]').names == (
        "coating",
        "kiss_cut",
    )
    assert parse_operations('{"operations": ["Kiss Cut"]}').names == ("kiss_cut",)
    assert normalise_operation(" Kiss - Cut ") == "kiss_cut"


@given(
    st.lists(
        st.one_of(
            st.text(max_size=30),
            st.from_regex(r"[0-9]{1,5}_[0-9]{1,5}_[0-9a-z]{1,3}", fullmatch=True),
        ),
        max_size=20,
    ),
    st.sets(st.text(max_size=8), max_size=4),
)
def test_r5_classification_is_total_and_runlists_come_first(codes: list[str], runlists) -> None:
    classes = classify_codes(pd.Series(codes, dtype="object"), set(runlists))
    assert set(classes["code_kind"]) <= {"runlist", "job", "unrecognised"}
    for code, row in zip(codes, classes.itertuples(index=False), strict=True):
        if code in runlists:
            assert row.code_kind == "runlist"
        elif row.code_kind == "job":
            assert code == f"{row.job_id}_{row.version_tag}"


def test_r5_job_code_shape() -> None:
    classes = classify_codes(
        pd.Series(["4604_5889_1", "4604_5889", "RL-1", "4604_5889_1_2"]), {"RL-1"}
    )
    assert classes["code_kind"].tolist() == ["job", "unrecognised", "runlist", "unrecognised"]
    assert classes.loc[0, ["job_id", "version_tag"]].tolist() == ["4604_5889", "1"]


def test_r6_choice_prefers_highest_marker_then_greatest_id() -> None:
    candidates = pd.DataFrame(
        {
            "source_id": [1, 1, 2, 2, 3],
            "runlist_id": ["RL-B", "RL-A", "RL-A", "RL-B", "RL-C"],
            "max_marker": [10, 20, pd.NA, pd.NA, pd.NA],
        }
    )
    chosen = choose_runlists(candidates).set_index("source_id")
    assert chosen.loc[1, "runlist_id"] == "RL-A" and "chose RL-A" in chosen.loc[1, "note"]
    assert chosen.loc[2, "runlist_id"] == "RL-B"
    assert chosen.loc[3, "runlist_id"] == "RL-C" and pd.isna(chosen.loc[3, "note"])


def test_r6_ties_and_never_printed_go_to_the_greatest_id_in_natural_order() -> None:
    candidates = pd.DataFrame(
        {
            "source_id": [1, 1, 1, 2, 2, 2],
            "runlist_id": ["RL-9", "RL-10", "RL-2", "9", "10", "8"],
            "max_marker": [pd.NA, pd.NA, pd.NA, 5, 5, 4],
        }
    )
    chosen = choose_runlists(candidates).set_index("source_id")
    assert chosen.loc[1, "runlist_id"] == "RL-10"  # text order would pick RL-9
    assert chosen.loc[1, "note"] == (
        "job is in runlists RL-2, RL-9, RL-10; chose RL-10 (none printed yet: greatest runlist id)"
    )
    assert chosen.loc[2, "runlist_id"] == "10"
    assert chosen.loc[2, "note"] == (
        "job is in runlists 8, 9, 10; chose 10 (highest print marker 5, tied: greatest runlist id)"
    )


def test_r6_note_prints_the_marker_as_an_integer() -> None:
    # A left join leaves float markers with NaN; a bigint marker must not be rounded either.
    floats = pd.DataFrame(
        {"source_id": [1, 1], "runlist_id": ["RL-B", "RL-A"], "max_marker": [float("nan"), 2692.0]}
    )
    (note,) = choose_runlists(floats)["note"]
    assert note == "job is in runlists RL-A, RL-B; chose RL-A (highest print marker 2692)"
    big = 2**62
    bigints = pd.DataFrame(
        {"source_id": [7, 7], "runlist_id": ["RL-Z", "RL-Y"], "max_marker": [big, big + 1]},
        dtype="object",
    )
    (row,) = choose_runlists(bigints).itertuples(index=False)
    assert row.runlist_id == "RL-Y"  # as floats the two markers would be equal, and RL-Z win
    assert row.note.endswith("(highest print marker 4611686018427387905)")


@given(st.lists(st.integers(0, 120), min_size=1, max_size=8, unique=True))
def test_r6_natural_order_of_numbered_runlists_is_numeric(numbers: list[int]) -> None:
    candidates = pd.DataFrame(
        {"source_id": 1, "runlist_id": [f"RL-{n}" for n in numbers], "max_marker": pd.NA}
    )
    (chosen,) = choose_runlists(candidates)["runlist_id"]
    assert chosen == f"RL-{max(numbers)}"
