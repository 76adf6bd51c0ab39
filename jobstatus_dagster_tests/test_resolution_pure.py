"""R5, R6, R9 resolution on frames: no database, no Dagster."""

from datetime import datetime

import pandas as pd

from jobstatus_dagster.core.plan import PRINT_OS, SCANNER, Window
from jobstatus_dagster.core.resolution import (
    PrintReferences,
    ScanReferences,
    resolve_prints,
    resolve_scans,
)

T0 = datetime(2026, 11, 1, 8, 0, 0)
CUSTOMER = "Labex"


def frame(columns: list[str], rows: list[tuple] = ()) -> pd.DataFrame:
    data = pd.DataFrame(list(rows), columns=columns)
    return data.astype({c: "string" for c in columns if c.endswith("_id") or c == "status"})


def paths(*rows: tuple[str, str]) -> pd.DataFrame:
    return frame(["runlist_id", "imposition_id"], rows)


def files(*rows: tuple[str, str]) -> pd.DataFrame:
    return frame(["imposition_id", "file_id"], rows)


def scan_rows(*scans: tuple[int, str, datetime]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": pd.Series([s[0] for s in scans], dtype="int64"),
            "marker": pd.Series([s[0] for s in scans], dtype="Int64"),
            "code_text": [s[1] for s in scans],
            "event_time": [s[2] for s in scans],
            "operations_json": ['["coating"]'] * len(scans),
            "machine_id": ["M1"] * len(scans),
            "kind": ["window"] * len(scans),
        }
    )


def scan_refs(
    runlist_paths: pd.DataFrame = None,
    job_mapping: pd.DataFrame = None,
    imposition_runlists: pd.DataFrame = None,
    candidate_paths: pd.DataFrame = None,
    print_rows: pd.DataFrame = None,
    mapping: pd.DataFrame = None,
) -> ScanReferences:
    return ScanReferences(
        operation_codes=pd.DataFrame({"operation": ["coating"], "operation_id": ["op003"]}),
        runlist_paths=paths() if runlist_paths is None else runlist_paths,
        job_mapping=files() if job_mapping is None else job_mapping,
        imposition_runlists=paths() if imposition_runlists is None else imposition_runlists,
        candidate_paths=paths() if candidate_paths is None else candidate_paths,
        print_rows=(
            pd.DataFrame(
                {
                    "imposition_id": pd.Series(dtype="string"),
                    "marker": pd.Series(dtype="Int64"),
                    "complete_time": pd.Series(dtype="datetime64[us]"),
                }
            )
            if print_rows is None
            else print_rows
        ),
        mapping=files() if mapping is None else mapping,
    )


def prints(*rows: tuple[str, int, datetime]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "imposition_id": pd.Series([r[0] for r in rows], dtype="string"),
            "marker": pd.Series([r[1] for r in rows], dtype="Int64"),
            "complete_time": [r[2] for r in rows],
        }
    )


def resolve(rows: pd.DataFrame, refs: ScanReferences):
    return resolve_scans(Window(SCANNER, 0, 10), rows, refs, T0, CUSTOMER)


def chosen(resolved) -> dict[int, str]:
    runlists = resolved.scan_runlists
    return dict(zip(runlists["source_id"], runlists["runlist_id"], strict=True))


def test_r5_runlist_scan_reaches_its_impositions_and_their_files() -> None:
    refs = scan_refs(
        runlist_paths=paths(("RL-1", "IMP-A"), ("RL-1", "IMP-B")),
        mapping=files(("IMP-A", "FILE_1_Labex_100_200"), ("IMP-B", "FILE_2_Labex_101_201")),
    )
    resolved = resolve(scan_rows((1, " RL-1 ", T0)), refs)
    assert chosen(resolved) == {1: "RL-1"}  # the code compares trimmed (R4)
    reached = resolved.runlist_files.sort_values("imposition_id")
    assert reached["file_id"].tolist() == ["FILE_1_Labex_100_200", "FILE_2_Labex_101_201"]
    assert resolved.single_jobs.empty
    assert resolved.stats["runlist_scans"] == 1


def test_r5_unrecognised_and_missing_codes_fail() -> None:
    resolved = resolve(scan_rows((1, "nonsense", T0), (2, "  ", T0)), scan_refs())
    reasons = dict(zip(resolved.failures["source_id"], resolved.failures["reason"], strict=True))
    assert reasons == {1: "unrecognised_code", 2: "missing_code"}
    assert resolved.scans.empty


def test_r6_job_scan_widens_to_the_runlist_holding_its_job() -> None:
    refs = scan_refs(
        job_mapping=files(("IMP-A", "FILE_1_Labex_100_200")),
        imposition_runlists=paths(("RL-1", "IMP-A")),
        candidate_paths=paths(("RL-1", "IMP-A"), ("RL-1", "IMP-B")),
        mapping=files(("IMP-A", "FILE_1_Labex_100_200"), ("IMP-B", "FILE_1_Labex_102_202")),
    )
    resolved = resolve(scan_rows((1, "100_200_1", T0)), refs)
    assert chosen(resolved) == {1: "RL-1"}
    assert set(resolved.runlist_files["imposition_id"]) == {"IMP-A", "IMP-B"}
    assert resolved.single_jobs.empty
    assert resolved.stats["job_scans_widened_to_runlist"] == 1


def test_r6_job_in_no_runlist_is_that_job_alone() -> None:
    refs = scan_refs(job_mapping=files(("IMP-A", "FILE_1_Labex_100_200")))
    resolved = resolve(scan_rows((1, "100_200_1", T0)), refs)
    assert chosen(resolved) == {}
    assert resolved.single_jobs[["job_id", "version_tag"]].values.tolist() == [["100_200", "1"]]


def test_r4_foreign_file_ids_never_reach_a_job() -> None:
    refs = scan_refs(
        job_mapping=files(("IMP-A", "FILE_1_Other_100_200")),
        imposition_runlists=paths(("RL-1", "IMP-A")),
        candidate_paths=paths(("RL-1", "IMP-A")),
    )
    resolved = resolve(scan_rows((1, "100_200_1", T0)), refs)
    # IMP-A holds another customer's file 100_200, not ours: the scan does not widen to RL-1.
    assert chosen(resolved) == {}
    assert resolved.single_jobs["source_id"].tolist() == [1]


def two_runlists(print_rows: pd.DataFrame) -> ScanReferences:
    return scan_refs(
        job_mapping=files(("IMP-A", "FILE_1_Labex_100_200"), ("IMP-B", "FILE_1_Labex_100_200")),
        imposition_runlists=paths(("RL-9", "IMP-A"), ("RL-10", "IMP-B")),
        candidate_paths=paths(("RL-9", "IMP-A"), ("RL-10", "IMP-B")),
        print_rows=print_rows,
    )


def test_r6_several_runlists_choose_the_one_printed_last_before_the_scan() -> None:
    at = pd.Timestamp(T0)
    refs = two_runlists(
        prints(
            ("IMP-A", 7, at - pd.Timedelta(minutes=5)),
            ("IMP-B", 5, at - pd.Timedelta(minutes=9)),
            ("IMP-B", 9, at + pd.Timedelta(minutes=1)),  # after the scan: not counted
        )
    )
    resolved = resolve(scan_rows((1, "100_200_1", T0)), refs)
    assert chosen(resolved) == {1: "RL-9"}
    note = resolved.scan_runlists["note"].iloc[0]
    assert note == "job is in runlists RL-9, RL-10; chose RL-9 (highest print marker 7)"


def test_r6_tie_goes_to_the_greatest_runlist_in_natural_order() -> None:
    at = pd.Timestamp(T0) - pd.Timedelta(minutes=1)
    refs = two_runlists(prints(("IMP-A", 7, at), ("IMP-B", 7, at)))
    resolved = resolve(scan_rows((1, "100_200_1", T0)), refs)
    assert chosen(resolved) == {1: "RL-10"}  # 'RL-10' > 'RL-9' in natural order
    assert "tied: greatest runlist id" in resolved.scan_runlists["note"].iloc[0]


def test_r6_nothing_printed_goes_to_the_greatest_runlist() -> None:
    resolved = resolve(scan_rows((1, "100_200_1", T0)), two_runlists(prints()))
    assert chosen(resolved) == {1: "RL-10"}
    assert "none printed yet" in resolved.scan_runlists["note"].iloc[0]


# ----- print OS ---------------------------------------------------------------------------


def print_rows(*rows: tuple[int, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": pd.Series([r[0] for r in rows], dtype="int64"),
            "marker": pd.Series([r[0] for r in rows], dtype="Int64"),
            "imposition_id": [r[1] for r in rows],
            "status": [r[2] for r in rows],
            "event_time": [T0] * len(rows),
            "kind": ["window"] * len(rows),
        }
    )


def history(*rows: tuple[int, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": [r[0] for r in rows],
            "imposition_id": pd.Series([r[1] for r in rows], dtype="string"),
            "status": pd.Series([r[2] for r in rows], dtype="string"),
            "marker": [r[0] for r in rows],
            "event_time": [T0] * len(rows),
        }
    )


def test_r9_imposition_reaches_every_file_of_its_jobs() -> None:
    refs = PrintReferences(
        reached_before=frame(["job_id", "version_tag"]),
        mapping=files(("IMP-A", "FILE_1_Labex_100_200"), ("IMP-A", "FILE_1_Other_300_400")),
        job_mapping=files(("IMP-A", "FILE_1_Labex_100_200"), ("IMP-B", "FILE_2_Labex_100_200")),
        history=history((1, "IMP-A", "printed"), (0, "IMP-B", "bogus")),
    )
    resolved = resolve_prints(
        Window(PRINT_OS, 0, 1), print_rows((1, "IMP-A", "PRINTED")), refs, T0, CUSTOMER
    )
    assert resolved.event_files[["job_id", "version_tag"]].values.tolist() == [["100_200", "1"]]
    assert set(resolved.job_files["imposition_id"]) == {"IMP-A", "IMP-B"}  # both versions (R9)
    assert resolved.history["status"].tolist() == ["PRINTED"]  # R10: normalised, unknown dropped
    foreign = resolved.failures[resolved.failures["reason"] == "foreign_file"]
    assert foreign["subject"].tolist() == ["FILE_1_Other_300_400"]


def test_r22_jobs_reached_before_are_recomputed_even_without_a_file_now() -> None:
    refs = PrintReferences(
        reached_before=frame(["job_id", "version_tag"], [("555_666", "1")]),
        mapping=files(),
        job_mapping=files(("IMP-Z", "FILE_1_Labex_555_666")),
        history=history(),
    )
    resolved = resolve_prints(
        Window(PRINT_OS, 0, 1), print_rows((1, "IMP-A", "PRINTED")), refs, T0, CUSTOMER
    )
    assert resolved.reached_before == ["555_666"]
    assert resolved.job_files["job_id"].tolist() == ["555_666"]
    assert resolved.failures["reason"].tolist() == ["unmapped_imposition"]
