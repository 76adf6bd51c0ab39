"""The code location a test daemon serves: the product's definitions without its sensors and
schedule, so that only the runs and backfills a test submits ever run."""

import dagster as dg

from jobstatus_dagster.definitions import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    product = build_definitions(
        dg.EnvVar("JOBSTATUS_JOBMANAGER_URL"), dg.EnvVar("JOBSTATUS_LOGS_URL")
    )
    return dg.Definitions(
        assets=product.assets,
        asset_checks=product.asset_checks,
        jobs=product.jobs,
        resources=product.resources,
        executor=product.executor,
    )
