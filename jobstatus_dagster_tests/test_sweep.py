"""R19 for rows at any marker: a row committed far below the marker (beyond the look-back) or
with a negative marker is still processed, by a bounded sweep of the history (defect D of the
fault suite: such rows used to be neither processed nor recorded)."""

import json
from datetime import timedelta

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.io.sources import source_backlog
from jobstatus_dagster.pipeline.resources import PostgresDatabase
from jobstatus_dagster_tests.shop import T0, Shop
from jobstatus_dagster_tests.test_sensor import window_config


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
        defs.resources["jobmanager"].engine, source_type, defs.resources["processing"].resolved()
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


def stored_sweep(shop: Shop) -> tuple:
    with shop.jm.connect() as conn:
        return tuple(
            conn.execute(
                sa.text(
                    "SELECT sweep_marker, sweep_source_id FROM processing_markers"
                    " WHERE marker_type = 'print_os'"
                )
            ).one()
        )


def tick(shop: Shop, instance, cursor: str | None) -> dg.SensorResult:
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")
    resources = {
        "jobmanager": PostgresDatabase(url=shop.urls.jobmanager),
        "processing": shop.processing,
    }
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        return sensor(context)


def test_r19_sweep_goes_round_the_whole_history_while_idle_a_bounded_slice_per_look(
    urls, instance
) -> None:
    """With nothing new to process, each sensor look passes over one clean slice of the history
    (its cursor keeps the place; nothing is written), until it meets a slice holding rows never
    processed: then it requests a run for that slice, which processes them."""
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
        stored = stored_sweep(shop)
        cursor, idle_places, requested = None, [], []
        for _ in range(8):  # <= 12 rows of history in this module, 3 per slice
            result = tick(shop, instance, cursor)
            cursor = result.cursor
            if not result.run_requests:
                assert result.skip_reason.skip_message.startswith("nothing past")
                idle_places.append(json.loads(cursor)["sweep_after"])
                continue
            (request,) = result.run_requests
            requested.append(request)
            assert stored_sweep(shop) == stored  # looks never move the runs' sweep
            slice_ = window_config(request)["sweep"]
            assert request.tags["jobstatus/sweep"]
            result = (
                shop.definitions()
                .resolve_job_def("process_print_os")
                .execute_in_process(
                    run_config=request.run_config, instance=instance, tags=request.tags
                )
            )
            assert result.success
            if all(processed(shop, source_id) for source_id in late):
                break
        # The look walked on over clean slices before it found the late rows ...
        assert len(idle_places) >= 2 and len(set(map(str, idle_places))) == len(idle_places)
        # ... and a run for each slice holding some of them (they may straddle two) processed
        # them; each run carried its slice, near the top of the history.
        assert 1 <= len(requested) <= 2
        assert slice_["after"] is not None and slice_["after"][0] <= top - 1
        assert all(processed(shop, source_id) for source_id in late)
        assert shop.job_print_row(job, "1")["status"] == "completed"
        assert shop.marker() == top
        # The next look finds the slice clean and walks on.
        after = tick(shop, instance, cursor)
        assert after.run_requests == [] or after.run_requests is None
        assert json.loads(after.cursor)["sweep_after"] != json.loads(cursor)["sweep_after"]


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
