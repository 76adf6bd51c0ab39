"""R4 file ids and R12 version order: pure, with property-based checks."""

import pandas as pd
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from jobstatus_dagster.core.identifiers import (
    FILE_JOB_SQL,
    FOREIGN,
    ID_WHITESPACE,
    MALFORMED,
    MAX_KEY_BYTES,
    OURS,
    SUBJECT_CHARS,
    classify_file_ids,
    file_id_sql_patterns,
    foreign_file_failures,
    guard_plan_keys,
    highest_versions,
    key_too_long,
    normalise_operation_codes,
    parse_file_id,
    parse_file_ids,
    short_subject,
    trim_id,
    trim_ids,
    trimmed_sql,
    version_sort_key,
)
from jobstatus_dagster.core.plan import (
    FAILURE_COLUMNS,
    IDENTIFIER_TOO_LONG,
    SCANNER,
    UpdatePlan,
    Window,
    empty,
)

digits = st.from_regex(r"[0-9]{1,6}", fullmatch=True)
version_tags = st.from_regex(r"[0-9A-Za-z]{1,4}", fullmatch=True)
extras = st.from_regex(r"[0-9A-Za-z_.-]{0,12}", fullmatch=True)


def test_r4_example_from_the_plan() -> None:
    assert parse_file_id("FILE_1_Labex_4604_5889_80") == ("4604_5889", "1")
    assert parse_file_id("FILE_2_Labex_4604_5889") == ("4604_5889", "2")


def test_r4_non_matching_ids_are_not_guessed() -> None:
    for bad in [
        "FILE_1_Other_4604_5889_80",  # another customer
        "FILE_1_Labex_4604",  # one digit group
        "FILE_1_Labex_46a4_5889",
        "file_1_Labex_4604_5889",
        "FILE__Labex_4604_5889",
        "FILE_1_Labex_4604_5889\x0b",  # not whitespace R4 trims (SQL's btrim keeps it too)
        "garbage.pdf",
        "",
    ]:
        assert parse_file_id(bad) is None, bad


def test_r4_surrounding_whitespace_is_trimmed_and_trailing_newline_is_not_special() -> None:
    for spelling in (
        "FILE_1_Labex_1001_2001\n",
        " FILE_1_Labex_1001_2001",
        "\tFILE_1_Labex_1001_2001\r\n",
    ):
        assert parse_file_id(spelling) == ("1001_2001", "1"), repr(spelling)
    parsed = parse_file_ids(pd.Series(["FILE_1_Labex_1001_2001\n", "FILE_1_Labex_1001_2001"]))
    assert parsed["job_id"].tolist() == ["1001_2001", "1001_2001"]
    # Inside the id, whitespace still makes it another id (or a malformed one).
    assert parse_file_id("FILE_1_Labex_1001_2001\nx") is None
    assert trim_ids(pd.Series([" a\t", None, "\r\nb \n"])).tolist() == ["a", pd.NA, "b"]


whitespace = st.text(alphabet=ID_WHITESPACE, max_size=3)


@given(
    st.lists(
        st.tuples(
            whitespace,
            st.from_regex(
                r"FILE_[0-9a-z ]{1,3}_Labex_[0-9]{1,4}_[0-9]{1,4}(_[a-z0-9_ \n]{0,4})?",
                fullmatch=True,
            ),
            whitespace,
        ),
        min_size=1,
        max_size=20,
    )
)
def test_r4_python_and_sql_extract_the_same_job_from_padded_ids(
    engines: tuple[sa.Engine, sa.Engine], padded: list[tuple[str, str, str]]
) -> None:
    """R4 in Python and SQL: the same job id for any padding (FILE_JOB_SQL is indexed, R9)."""
    ids = [before + core + after for before, core, after in padded]
    with engines[1].connect() as conn:
        sql_jobs = (
            conn.execute(
                sa.text(
                    f"SELECT {FILE_JOB_SQL.replace(':', chr(92) + ':')}"
                    " FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS t(file_id, n) ORDER BY n"
                ),
                {"ids": ids},
            )
            .scalars()
            .all()
        )
    python_jobs = [None if pd.isna(j) else j for j in parse_file_ids(pd.Series(ids))["job_id"]]
    assert python_jobs == sql_jobs


def test_r4_customer_token_is_configurable() -> None:
    assert parse_file_id("FILE_3_Acme_1_2_x", customer="Acme") == ("1_2", "3")
    assert parse_file_id("FILE_3_Labex_1_2_x", customer="Acme") is None


@given(version_tags, digits, digits, extras)
def test_r4_valid_ids_round_trip(version: str, a: str, b: str, extra: str) -> None:
    file_id = f"FILE_{version}_Labex_{a}_{b}" + (f"_{extra}" if extra else "")
    parsed = parse_file_id(file_id)
    assert parsed is not None
    job_id, version_tag = parsed
    assert version_tag == version
    # The job id is the two digit groups; an extra starting with digits must not be swallowed.
    assert job_id == f"{a}_{b}" or (extra and job_id.startswith(f"{a}_"))


@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=30))
def test_r4_parser_never_crashes_on_arbitrary_text(values: list[str | None]) -> None:
    parsed = parse_file_ids(pd.Series(values, dtype="object"))
    assert len(parsed) == len(values)
    for value, (job_id, version) in zip(values, parsed.itertuples(index=False), strict=True):
        if pd.isna(job_id):
            assert value is None or parse_file_id(value) is None
        else:
            assert parse_file_id(value) == (job_id, version)


def test_r12_versions_compare_numerically_where_both_are_numbers() -> None:
    assert version_sort_key("10") > version_sort_key("9")
    assert version_sort_key("b") > version_sort_key("a")
    frame = pd.DataFrame(
        {"job_id": ["1_2", "1_2", "1_2", "3_4"], "version_tag": ["2", "10", "9", "1"]}
    )
    assert dict(highest_versions(frame).itertuples(index=False)) == {"1_2": "10", "3_4": "1"}


@given(st.lists(st.from_regex(r"[0-9]{1,3}", fullmatch=True), min_size=1, max_size=8))
def test_r12_numeric_highest_is_the_max_number(tags: list[str]) -> None:
    frame = pd.DataFrame({"job_id": "1_1", "version_tag": tags})
    (highest,) = highest_versions(frame)["version_tag"]
    assert int(highest) == max(int(t) for t in tags)


def test_r8_operation_codes_are_normalised_and_one_per_name() -> None:
    rows = [
        ("Die Cut", "op010"),
        ("die-cut", None),  # collides with 'Die Cut': the row with a code wins
        ("Kiss Cut", None),
        ("kiss_cut", "op006"),
        ("print ", " op001\n"),  # R4: codes are trimmed too
        ("Coating", "op099"),
        ("coating", "op003"),  # both have codes: the row spelled normalised wins
        ("backscore", ""),  # an empty code is no code
        ("---", "op777"),  # normalises to nothing: not an operation
    ]
    codes = normalise_operation_codes(
        pd.DataFrame(rows, columns=["operation", "operation_id"]).astype("string")
    )
    expected = {
        "backscore": None,
        "coating": "op003",
        "die_cut": "op010",
        "kiss_cut": "op006",
        "print": "op001",
    }
    assert {
        name: (None if pd.isna(code) else code) for name, code in codes.itertuples(index=False)
    } == expected
    assert codes["operation"].is_unique
    # The same table in any row order gives the same codes (R23).
    shuffled = normalise_operation_codes(
        pd.DataFrame(rows[::-1], columns=["operation", "operation_id"]).astype("string")
    )
    pd.testing.assert_frame_equal(shuffled, codes)


def test_r20_file_ids_are_ours_foreign_or_malformed() -> None:
    ids = {
        "FILE_1_Labex_4604_5889_80": OURS,
        " FILE_2_Labex_4604_5889\n": OURS,
        "FILE_1_Acme_4604_5889": FOREIGN,
        "FILE_1_Other_12_34_5": FOREIGN,
        "FILE_1_labex_4604_5889": MALFORMED,  # our token but for case: likely ours, mistyped
        "FILE_X_Other_abc": MALFORMED,
        "FILE_2_Labex_12345": MALFORMED,
        "garbage.pdf": MALFORMED,
        "": MALFORMED,
    }
    series = pd.Series([*ids, None], dtype="object")
    assert classify_file_ids(series, "Labex").tolist() == [*ids.values(), MALFORMED]
    assert classify_file_ids(pd.Series(["FILE_1_Labex_1_2"]), "Acme").tolist() == [FOREIGN]


def test_r20_foreign_failures_are_one_per_file_id_whatever_the_events() -> None:
    ids = pd.Series(["FILE_1_Acme_1_2", "FILE_1_Acme_1_2 ", "garbage", "FILE_1_Labex_1_2"] * 3)
    failures = foreign_file_failures(ids, "Labex")
    assert failures[["source_type", "source_id", "reason", "subject", "retryable"]].to_dict(
        "records"
    ) == [
        {
            "source_type": "imposition_file_mapping",
            "source_id": 0,
            "reason": "foreign_file",
            "subject": "FILE_1_Acme_1_2",
            "retryable": False,
        }
    ]
    assert foreign_file_failures(pd.Series([], dtype="string"), "Labex").empty


file_like = st.one_of(
    st.text(max_size=30),
    st.from_regex(
        r"\s?FILE_[0-9a-z ]{1,3}_[A-Za-z]{1,6}_[0-9]{1,3}_[0-9]{1,3}(_[a-z\n]{0,3})?\s?",
        fullmatch=True,
    ),
)


@given(st.lists(file_like, min_size=1, max_size=20))
def test_r4_r20_sql_patterns_classify_like_python(
    engines: tuple[sa.Engine, sa.Engine], values: list[str]
) -> None:
    """The data-quality check (SQL) and the processors (Python) agree on what is ours and what
    is well-formed, on trimmed ids."""
    values = [v.replace("\x00", "") for v in values]  # Postgres text holds no NUL
    ours, anyone = file_id_sql_patterns("Labex")
    with engines[1].connect() as conn:
        matched = conn.execute(
            sa.text(
                f"SELECT {trimmed_sql('v')} ~ :ours, {trimmed_sql('v')} ~ :anyone"
                " FROM unnest(CAST(:values AS text[])) WITH ORDINALITY AS t(v, n) ORDER BY n"
            ),
            {"values": values, "ours": ours, "anyone": anyone},
        ).all()
    kinds = classify_file_ids(pd.Series(values), "Labex").tolist()
    for value, kind, (is_ours, well_formed) in zip(values, kinds, matched, strict=True):
        if kind == OURS:
            assert is_ours and well_formed, value
        elif kind == FOREIGN:
            assert well_formed and not is_ours, value
        else:  # malformed: not well-formed, or our token but for case (the check compares lower)
            token = trim_id(value).split("_")[2] if well_formed else ""
            assert not is_ours and (not well_formed or token.casefold() == "labex"), value


@given(st.text(min_size=0, max_size=600))
def test_r20_a_failure_subject_fits_the_key_and_tells_values_apart(value: str) -> None:
    subject = short_subject(value)
    assert len(subject) <= SUBJECT_CHARS
    if len(value) <= SUBJECT_CHARS:
        assert subject == value
    else:
        assert subject.startswith(value[:100])
        assert short_subject(value + "x") != subject  # the digest covers the whole value


def test_r20_an_identifier_too_long_for_a_key_is_dropped_and_recorded() -> None:
    """R20: only the attribution with the long key is left out; the row's others stay."""
    window = Window(SCANNER, 0, 10)
    long_imp = "é" * (MAX_KEY_BYTES // 2 + 1)  # 501 characters, 1,002 bytes
    plan = UpdatePlan(window=window)
    plan.imposition_attributions = pd.DataFrame(
        {
            "source_type": SCANNER,
            "source_id": [7, 7, 8],
            "marker": [7, 7, 8],
            "imposition_id": [long_imp, "IMP-1", long_imp],
            "operation": "coating",
            "status": "completed",
            "event_time": pd.Timestamp("2026-11-01"),
            "evidence_notes": "",
        }
    )
    plan.failures = empty(FAILURE_COLUMNS)
    guarded = guard_plan_keys(plan)
    assert guarded.imposition_attributions["imposition_id"].tolist() == ["IMP-1"]
    failures = guarded.failures.sort_values("source_id")
    assert failures["source_id"].tolist() == [7, 8]
    assert set(failures["reason"]) == {IDENTIFIER_TOO_LONG}
    assert not failures["retryable"].any()
    assert key_too_long(pd.Series(["é" * 500, long_imp, None])).tolist() == [False, True, False]
