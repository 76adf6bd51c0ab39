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


# Names as a shop writes them: known ones in several spellings, blanks, and arbitrary text.
op_names = st.sampled_from(
    ["coating", "Kiss Cut", " kiss-cut ", "DIE - CUT", "print", "", "  ", "-", "_x_"]
) | st.text(max_size=10)
flags = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["true", " Yes ", "false", "no", "0", ""])
)
list_items = (
    op_names
    | st.fixed_dictionaries({"operation": op_names})
    | st.fixed_dictionaries({"name": op_names})
    | st.fixed_dictionaries({}, optional={"operation": json_values, "name": json_values})
    | json_values
)
# The four shapes R7 lists, with hostile parts, next to arbitrary JSON.
r7_shapes = (
    st.dictionaries(op_names, flags, max_size=6)
    | st.lists(list_items, max_size=6)
    | st.fixed_dictionaries({"operations": st.lists(list_items, max_size=6) | json_values})
    | json_values
)

DEFINITELY_TRUE_WORDS = {"true", "yes"}
DEFINITELY_FALSE_WORDS = {"", "false", "no", "0"}


def _flag(value: object) -> bool | None:
    """R7 "true-ish", decided only where it is beyond argument; None = either reading is fine."""
    if value is None or value is False or value is True:
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in DEFINITELY_TRUE_WORDS:
            return True
        if word in DEFINITELY_FALSE_WORDS:
            return False
    return None


def _usable(names: list[object]) -> set[str]:
    return {n for n in (normalise_operation(x) for x in names if isinstance(x, str)) if n}


def _obligations(value: object) -> tuple[list[set[str]], set[str]]:
    """An oracle for R7 written from the spec, not from the parser.

    Returns (mentions, allowed). Each mention is something in the scan that names (or tries to
    name) an operation to apply, as the set of normalised names that would honour it; an empty
    set means only a described problem can honour it. ``allowed`` is every name the scan could
    legitimately yield (nothing may be invented).
    """
    mentions: list[set[str]] = []
    allowed: set[str] = set()

    def listed(items: list) -> None:
        for item in items:
            if isinstance(item, str):
                candidates = _usable([item])
            elif isinstance(item, dict):
                candidates = _usable([item.get("operation"), item.get("name")])
            else:
                candidates = set()  # a number, null, nested list...: unusable, must be described
            mentions.append(candidates)
            allowed.update(candidates)

    if isinstance(value, dict) and "operations" in value:
        inner = value["operations"]
        if isinstance(inner, list):
            listed(inner)
        else:
            mentions.append(set())  # {"operations": <not a list>}
        if len(value) > 1:
            mentions.append(set())  # keys beside "operations": a mix R7 does not list
    elif isinstance(value, dict):
        for key, flag in value.items():
            verdict = _flag(flag)
            if verdict is True:
                candidates = _usable([key])
                mentions.append(candidates)  # an empty key set to true must be described
                allowed.update(candidates)
            elif verdict is None:
                allowed.update(_usable([key]))
    elif isinstance(value, list):
        listed(value)
    else:
        mentions.append(set())  # a bare scalar is no shape R7 lists
    return mentions, allowed


@given(r7_shapes)
def test_r7_arbitrary_json_never_crashes_and_always_explains(value) -> None:
    parsed = parse_operations(json.dumps(value))
    names = set(parsed.names)
    assert all(name == normalise_operation(name) and name for name in parsed.names)
    assert len(names) == len(parsed.names), "each name once"
    assert all(isinstance(p, str) and p for p in parsed.problems)
    mentions, allowed = _obligations(value)
    assert names <= allowed, f"invented {names - allowed}"
    # Every true-ish name is returned or a problem is described: nothing silently dropped.
    unhonoured = [m for m in mentions if not m & names]
    assert len(parsed.problems) >= len(unhonoured), (unhonoured, parsed)
    if not mentions:
        assert not parsed.names


def test_r7_oracle_on_explicit_cases() -> None:
    """The oracle above and the parser agree on hand-written cases (the oracle is not vacuous)."""
    cases = {
        '{"Coating": true, "kiss_cut": false, "slitter": 1, "backscore": 0}': (
            ("coating", "slitter"),
            0,
        ),
        '{"": true, "coating": "yes"}': (("coating",), 1),
        '["coating", 3, null, {"operation": "Kiss Cut"}, {"colour": "red"}, ""]': (
            ("coating", "kiss_cut"),
            4,
        ),
        '{"operations": "coating"}': ((), 1),
        '{"operations": []}': ((), 0),
        '{"operations": ["coating"], "kiss_cut": true}': (("coating",), 1),
        '"coating"': ((), 1),
        "17": ((), 1),
        "{}": ((), 0),
    }
    for raw, (names, problems) in cases.items():
        parsed = parse_operations(raw)
        assert (parsed.names, len(parsed.problems)) == (names, problems), raw
        mentions, allowed = _obligations(json.loads(raw))
        assert set(names) <= allowed and sum(1 for m in mentions if not m) == problems, raw


def _is_json(raw: str) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


not_json = st.text(max_size=60).filter(lambda raw: not _is_json(raw))


@given(not_json)
def test_r7_text_that_is_not_json_yields_no_names_and_says_so(raw: str) -> None:
    parsed = parse_operations(raw)
    assert parsed.names == ()
    assert len(parsed.problems) == 1 and "not JSON" in parsed.problems[0]


@given(
    r7_shapes,
    st.sampled_from([None, 0, 2, "\t"]),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    st.booleans(),
    st.sampled_from(["", " ", "\n\t "]),
)
def test_r7_json_text_parses_like_its_value_whatever_the_formatting(
    value, indent, separators, ensure_ascii: bool, padding: str
) -> None:
    raw = padding + json.dumps(
        value, indent=indent, separators=separators, ensure_ascii=ensure_ascii
    )
    parsed = parse_operations(raw + padding)
    assert parsed == parse_operations(json.dumps(value))
    _, allowed = _obligations(value)
    assert set(parsed.names) <= allowed


def test_r7_null_operations_is_a_problem() -> None:
    parsed = parse_operations(None)
    assert parsed.names == () and len(parsed.problems) == 1


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


def test_r7_a_mix_applies_the_operations_list_and_records_the_other_keys() -> None:
    parsed = parse_operations('{"operations": ["coating"], "kiss_cut": true}')
    assert parsed.names == ("coating",)
    assert parsed.problems == ("keys beside 'operations' ignored: \"kiss_cut\"",)
    several = parse_operations('{"kiss_cut": true, "operations": ["Coating"], "slitter": 0}')
    assert several.names == ("coating",)
    assert several.problems == ('keys beside \'operations\' ignored: "kiss_cut", "slitter"',)
    not_a_list = parse_operations('{"operations": "coating", "print": true}')
    assert not_a_list.names == ()
    assert len(not_a_list.problems) == 2


def test_r7_r20_a_mix_is_an_unusable_operations_failure_beside_the_applied_list() -> None:
    scans = pd.DataFrame(
        {"source_id": [7], "operations_json": ['{"operations": ["coating"], "kiss_cut": true}']}
    )
    ops, failures = scan_operations(scans, {"coating", "kiss_cut"})
    assert list(zip(ops["source_id"], ops["operation"], strict=True)) == [(7, "coating")]
    assert list(failures["reason"]) == ["unusable_operations"]
    assert "kiss_cut" in failures["detail"].iloc[0]


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
