"""R19 for rows at any marker: a row committed far below the marker (beyond the look-back) or
with a negative marker is still processed, by a bounded sweep of the history (defect D of the
fault suite: such rows used to be neither processed nor recorded)."""

from datetime import timedelta

import sqlalchemy as sa

from jobstatus_dagster.pipeline.sensors import source_backlog
from jobstatus_dagster_tests.shop import T0, Shop


def files(job: str, *numbers: int) -> list[str]:
    return [f"FILE_1_Labex_{job}_{n}" for n in numbers]


def processed(shop: Shop, source_id: int, source_type: str = "print_os") -> bool:
    with shop.jm.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM processed_source_rows"
                    " WHERE source_type = :t AND source_id = :id"
                ),
                {"t": source_type, "id": source_id},
            ).scalar_one()
        )


def backlog(shop: Shop, source_type: str = "print_os"):
    defs = shop.definitions()
    return source_backlog(
        defs.resources["jobmanager"], source_type, defs.resources["processing"].resolved()
    )


def test_r19_rows_far_below_the_marker_and_negative_markers_are_processed(urls, instance) -> None:
    with Shop(urls, late_row_lookback=100) as shop:
        job = shop.add_job()
        shop.add_job_operation(job, "1")
        for name, number in (("A", 1), ("B", 2), ("C", 3)):
            shop.map_files(f"{job}-{name}", files(job, number))
        shop.print_event(f"{job}-A", "PRINTED", marker=shop.marker() + 50_000)
        shop.process(instance)
        marker = shop.marker()
        assert shop.job_print_row(job, "1")["notes"] == "1 of 3 files printed"

        far_below, _ = shop.print_event(f"{job}-B", "PRINTED", marker=marker - 40_000)
        negative, _ = shop.print_event(f"{job}-C", "PRINTED", marker=-95_723_876_458_405, at=T0)
        assert backlog(shop).late_rows == 2  # the sensor sees them and launches a run
        shop.process(instance)

        assert processed(shop, far_below) and processed(shop, negative)
        assert shop.imposition_print_row(f"{job}-C")["status"] == "completed"
        assert shop.job_print_row(job, "1")["status"] == "completed"
        assert shop.job_operations_json(job) == {"print": True}
        assert shop.marker() == marker  # late rows never move the marker (R18, R21)
        assert len(shop.audit(job)) == 3


def test_r19_sweep_is_bounded_per_run_and_goes_round_the_whole_history(urls, instance) -> None:
    with Shop(urls, late_row_lookback=0, sweep_rows=3) as shop:
        job = shop.add_job()
        shop.add_job_operation(job, "1")
        impositions = [f"{job}-{n}" for n in range(8)]
        for n, imposition in enumerate(impositions):
            shop.map_files(imposition, files(job, n))
        for imposition in impositions[:6]:
            shop.print_event(imposition, "PRINTED")
        shop.process(instance)
        top = shop.marker()
        # Two rows commit late, far below, and near the top of the history: the sweep must
        # walk past the clean slices at the bottom to reach them.
        late = [
            shop.print_event(impositions[6], "PRINTED", marker=top - 1)[0],
            shop.print_event(impositions[7], "PRINTED", marker=top - 1)[0],
        ]
        seen = []
        for _ in range(8):  # ≤ 12 rows of history in this module, 3 per slice
            seen.append(backlog(shop).late_rows)
            if seen[-1]:
                shop.process(instance)
        assert all(n <= 3 for n in seen)  # a tick never looks at more than one slice
        assert all(processed(shop, source_id) for source_id in late)
        assert shop.job_print_row(job, "1")["status"] == "completed"
        assert shop.marker() == top


def test_r19_scans_far_below_the_marker_are_processed(urls, instance) -> None:
    with Shop(urls, late_row_lookback=10) as shop:
        job = shop.add_job()
        shop.add_job_operation(job, "1", operation_id="op003")
        shop.add_job_operation(job, "1", operation_id="op006")
        first = shop.scan(f"{job}_1", {"operations": ["coating"]}, at=T0)
        shop.process(instance, "scanner")
        assert shop.job_op_row(job, "1", "op003")["source_id"] == first
        with shop.jm.begin() as conn:  # the scanner's marker jumps far ahead of the rows
            conn.execute(
                sa.text(
                    "UPDATE processing_markers SET last_processed_id = last_processed_id + 1000"
                    " WHERE marker_type = 'scanned_codes'"
                )
            )
        # A later scan with a new operation, so its effect cannot be mistaken for the first's.
        later = T0 + timedelta(hours=1)
        below = shop.scan(f"{job}_1", {"operations": ["coating", "Kiss Cut"]}, at=later)
        assert below < shop.marker("scanned_codes") - 10
        shop.process(instance, "scanner")
        assert processed(shop, below, "scanner")

        # Applied, not just recorded: the rows, jobs.operations and the audit carry the scan.
        for operation_id in ("op003", "op006"):
            row = shop.job_op_row(job, "1", operation_id)
            assert (row["status"], row["completed_by"], row["source_id"]) == (
                "completed",
                "scanner",
                below,
            ), operation_id
            assert row["completed_at"] == later  # R14: the scan's time
        assert shop.job_operations_json(job) == {"coating": True, "kiss_cut": True}
        audit = {
            (r["source_type"], r["source_id"], r["operation"], r["status"]) for r in shop.audit(job)
        }
        assert audit == {
            ("scanner", first, "coating", "completed"),
            ("scanner", below, "coating", "completed"),
            ("scanner", below, "kiss_cut", "completed"),
        }
        assert shop.failures(below) == []
