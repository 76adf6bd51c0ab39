"""Source freshness in the UI (issue 20): each source sensor shows its source's backlog as an
observation of the shop's table, only when the backlog changed; the tables we write carry
Dagster's table metadata, and their column schemas name real columns."""

import dagster as dg
import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import to_sqlalchemy_url
from jobstatus_dagster.pipeline.assets import OWNERS, PRINT_OS_TABLE, TABLES, TARGET_SPECS
from jobstatus_dagster.pipeline.resources import PostgresDatabase
from jobstatus_dagster_tests.shop import Shop


class Looks:
    """Ticks of the print-OS sensor with the cursor carried over; each tick's observations are
    recorded in the instance as the daemon records them."""

    def __init__(self, shop: Shop, instance: dg.DagsterInstance) -> None:
        self.shop, self.instance, self.cursor = shop, instance, None

    def tick(self) -> list[dg.AssetObservation]:
        sensor = self.shop.definitions().resolve_sensor_def("print_os_sensor")
        resources = {
            "jobmanager": PostgresDatabase(url=self.shop.urls.jobmanager),
            "processing": self.shop.processing,
        }
        with dg.build_sensor_context(
            instance=self.instance, resources=resources, cursor=self.cursor
        ) as context:
            result = sensor(context)
        self.cursor = result.cursor
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        return list(result.asset_events)

    def recorded(self) -> list[dict]:
        records = self.instance.fetch_observations(PRINT_OS_TABLE, limit=100).records
        return [
            {k: v.value for k, v in r.asset_observation.metadata.items()} for r in records[::-1]
        ]


@pytest.fixture(scope="module")
def shop(urls):
    with Shop(urls, chunk_size=100) as s:
        yield s


def test_the_backlog_is_observed_when_it_changes_and_not_when_it_stays(shop: Shop, instance):
    looks = Looks(shop, instance)
    (first,) = looks.tick()
    assert first.asset_key == PRINT_OS_TABLE
    assert first.metadata["marker"].value == shop.marker()
    assert first.metadata["rows_past_marker"].value == 0
    assert first.metadata["backlog"].value == "caught up"
    assert looks.tick() == [] and looks.tick() == []  # a quiet shop adds nothing

    for _ in range(2):
        shop.print_event("FR-I1", "PRINTED")
    (behind,) = looks.tick()
    assert behind.metadata["rows_past_marker"].value == 2
    assert behind.metadata["backlog"].value == "less than one window behind"
    assert looks.tick() == []  # still behind (runs requested, not yet run)

    shop.process(instance)
    (caught_up,) = looks.tick()
    assert caught_up.metadata["marker"].value == shop.marker() == first.metadata["marker"].value + 2
    assert caught_up.metadata["backlog"].value == "caught up"
    assert looks.tick() == []

    # A shop at work: rows arrive and are processed between two looks. The marker moved, but
    # within its marker range and still caught up: nothing new to show, nothing recorded.
    shop.print_event("FR-I1", "PRINTED")
    shop.process(instance)
    assert looks.tick() == []
    # Falling a whole window behind is shown (chunk_size=100 here).
    for _ in range(100):
        shop.print_event("FR-I1", "PRINTED")
    (far,) = looks.tick()
    assert far.metadata["backlog"].value == "one window or more behind"
    assert far.metadata["rows_past_marker"].value == 100
    assert [r["backlog"] for r in looks.recorded()] == [
        "caught up",
        "less than one window behind",
        "caught up",
        "one window or more behind",
    ]


def test_the_tables_we_write_carry_dagsters_table_metadata_with_real_columns(urls) -> None:
    for spec in TARGET_SPECS:
        assert spec.owners == OWNERS
        table_name = spec.metadata["dagster/table_name"]
        database, schema, table = table_name.split(".")
        declared = [c.name for c in spec.metadata["dagster/column_schema"].columns]
        engine = sa.create_engine(to_sqlalchemy_url(getattr(urls, database)))
        with engine.connect() as conn:
            actual = set(
                conn.execute(
                    sa.text(
                        "SELECT column_name FROM information_schema.columns"
                        " WHERE table_schema = :s AND table_name = :t"
                    ),
                    {"s": schema, "t": table},
                ).scalars()
            )
        engine.dispose()
        assert declared and set(declared) <= actual, (table_name, set(declared) - actual)
    assert set(TABLES) >= {spec.key for spec in TARGET_SPECS}
