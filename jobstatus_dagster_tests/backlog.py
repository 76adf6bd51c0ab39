"""A small deterministic backlog of every kind of row, for whole-pipeline comparisons."""

from datetime import timedelta

from jobstatus_dagster_tests.shop import T0, Shop

JOBS = ("7001_1", "7002_2", "7003_3", "7004_4")


def fill_small_backlog(shop: Shop) -> None:
    """Same rows, same ids, in any fresh database."""
    for job in JOBS[:3]:
        shop.add_job(job)
        for version in ("1", "2") if job == "7001_1" else ("1",):
            for op in ("op001", "op003", "op006"):
                shop.add_job_operation(job, version, op)
    shop.add_job_operation(JOBS[3], "1")  # 7004_4 is missing from jobs
    shop.map_files("B-I1", ["FILE_1_Labex_7001_1_1", "FILE_1_Labex_7002_2_1", "garbage.pdf"])
    shop.map_files("B-I2", ["FILE_1_Labex_7001_1_2", "FILE_1_Labex_7003_3_1"])
    shop.map_files("B-I3", ["FILE_2_Labex_7001_1_1", "FILE_1_Labex_7004_4_1"])
    shop.map_files("B-I4", ["FILE_1_Labex_7002_2_1"])  # reprint
    shop.plan_runlist("B-RL1", ["B-I1", "B-I2"])
    shop.plan_runlist("B-RL2", ["B-I3"])
    events = [
        ("B-I1", "PRINTED"),
        ("B-I2", "ABORTED"),
        ("B-I3", "printed"),
        ("B-I9", "PRINTED"),
        ("B-I2", "PRINTED"),
        ("B-I1", "PAUSED"),
        (None, "PRINTED"),
        ("B-I4", "Aborted"),
    ]
    for n, (name, status) in enumerate(events):
        shop.print_event(name, status, marker=100 + 2 * n, at=T0 + timedelta(minutes=n))
    scans = [
        ("B-RL1", {"coating": True, "kiss_cut": False}),
        (" 7003_3_1 ", ["kiss_cut"]),
        ("7001_1_2", [{"name": "Kiss Cut"}, "laminate"]),
        ("XYZ-???", ["coating"]),
        ("B-RL2", {"operations": ["print", "backscore"]}),
        ("B-RL1", 42),
    ]
    for n, (code, ops) in enumerate(scans):
        shop.scan(code, ops, at=T0 + timedelta(minutes=30 + n))
