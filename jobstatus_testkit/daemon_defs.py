"""The code location a daemon of the tests or the fault suite serves: the product's definitions
without its sensors and schedule, so that only the runs and backfills submitted ever run. The
processing settings come from the daemon's environment, like the product's code location's (the
fault suite turns retries off there); unset, they keep their documented defaults."""

import dagster as dg

from jobstatus_dagster.config import load_settings
from jobstatus_dagster.definitions import build_definitions
from jobstatus_dagster.pipeline.resources import ProcessingSettings


@dg.definitions
def defs() -> dg.Definitions:
    product = build_definitions(
        dg.EnvVar("JOBSTATUS_JOBMANAGER_URL"),
        dg.EnvVar("JOBSTATUS_LOGS_URL"),
        processing=ProcessingSettings.from_settings(load_settings()),
    )
    return dg.Definitions(
        assets=product.assets,
        asset_checks=product.asset_checks,
        jobs=product.jobs,
        resources=product.resources,
        executor=product.executor,
    )
