"""The UI's guard request by request (what a browser sends in each case), and TickLogs: sensor
tick logs kept for the UI, run output never captured. test_topology serves both for real."""

import os
import sys
import time
from pathlib import Path

import pytest
from dagster._core.storage.compute_log_manager import ComputeIOType

from jobstatus_dagster.instance import TickLogs, grpc_workspace
from jobstatus_dagster.webserver import Door, local_hosts

DOOR = Door.of([*local_hosts(3000), "dagster.shop.example"])
UI = "http://127.0.0.1:3000"
MUTATION = "mutation{launchPartitionBackfill(backfillParams:{}){__typename}}"


def refusal(method="GET", path="/", query="", **headers) -> str | None:
    sent = {"host": "127.0.0.1:3000"}
    sent.update({k.replace("_", "-").lower(): v for k, v in headers.items()})
    return DOOR.refusal(method, path, query, sent)


def test_the_uis_own_pages_and_queries_pass() -> None:
    assert refusal(sec_fetch_site="none", sec_fetch_mode="navigate") is None  # typed address
    assert refusal(path="/runs", sec_fetch_site="same-origin", sec_fetch_mode="navigate") is None
    same_origin = {"origin": UI, "sec_fetch_site": "same-origin", "sec_fetch_mode": "cors"}
    assert refusal("POST", "/graphql", **same_origin) is None
    assert refusal("GET", "/graphql", **same_origin) is None  # websocket upgrade
    # Behind the proxy: its public name, over HTTPS.
    proxied = {"host": "dagster.shop.example", "origin": "https://dagster.shop.example"}
    assert refusal("POST", "/graphql", sec_fetch_site="same-origin", **proxied) is None


def test_clients_without_a_browser_pass() -> None:
    assert refusal("POST", "/graphql") is None  # jobstatus reload, scripts, curl


def test_a_link_from_another_site_opens_a_page() -> None:
    assert refusal(path="/runs/abc", sec_fetch_site="cross-site", sec_fetch_mode="navigate") is None


@pytest.mark.parametrize(
    ("case", "request_"),
    [
        (
            "the request of issue 20",
            {
                "path": "/graphql",
                "query": f"query={MUTATION}",
                "origin": "http://evil.example",
                "sec_fetch_site": "cross-site",
            },
        ),
        (
            "an <img> (no Origin on a no-cors GET)",
            {"path": "/graphql", "query": f"query={MUTATION}", "sec_fetch_site": "cross-site"},
        ),
        (
            "a link to a mutation",
            {
                "path": "/graphql",
                "query": f"query={MUTATION}",
                "sec_fetch_site": "cross-site",
                "sec_fetch_mode": "navigate",
            },
        ),
        (
            "a mutation as GET without browser headers",
            {"path": "/graphql", "query": f"query={MUTATION}"},
        ),
        (
            "a named mutation beside a query",
            {"path": "/graphql", "query": "query=query+A{version}+mutation+B{__typename}"},
        ),
        (
            "a cross-site POST",
            {"method": "POST", "path": "/graphql", "origin": "http://evil.example"},
        ),
        (
            "a sibling site's fetch",
            {"method": "POST", "path": "/graphql", "sec_fetch_site": "same-site"},
        ),
        (
            "a cross-site websocket",
            {"path": "/graphql", "origin": "http://evil.example", "sec_fetch_mode": "websocket"},
        ),
        ("a rebound DNS name", {"host": "evil.example:3000"}),
        ("another port's origin", {"method": "POST", "origin": "http://127.0.0.1:8000"}),
        ("a sandboxed page", {"method": "POST", "origin": "null"}),
    ],
)
def test_what_a_foreign_page_could_send_is_refused(case: str, request_: dict) -> None:
    assert refusal(**request_) is not None, case


def test_a_query_sent_as_get_passes_and_garbage_is_left_to_dagster() -> None:
    assert refusal(path="/graphql", query="query={version}") is None
    assert refusal(path="/graphql", query="query=mutation{") is None  # does not parse


def test_the_grpc_workspace_names_the_code_server(tmp_path: Path) -> None:
    import yaml

    path = grpc_workspace(tmp_path, "127.0.0.1", 4266)
    assert yaml.safe_load(path.read_text()) == {
        "load_from": [
            {"grpc_server": {"host": "127.0.0.1", "port": 4266, "location_name": "jobstatus"}}
        ]
    }


def test_tick_logs_keep_what_a_tick_logged_and_only_that(tmp_path: Path) -> None:
    logs = TickLogs(base_dir=str(tmp_path))
    quiet, talkative = ["repo", "sensor", "1"], ["repo", "sensor", "2"]
    with logs.open_log_stream(quiet, ComputeIOType.STDERR):
        pass
    with logs.open_log_stream(talkative, ComputeIOType.STDERR) as stream:
        stream.write('{"msg": "requesting print_os:0-114"}\n')
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["2.err"]
    data = logs.get_log_data(talkative)
    assert data.stderr == b'{"msg": "requesting print_os:0-114"}\n'
    assert logs.is_capture_complete(talkative)


def test_tick_logs_never_capture_a_runs_output(tmp_path: Path) -> None:
    logs = TickLogs(base_dir=str(tmp_path))
    stdout, stderr = sys.stdout, sys.stderr
    fds = (os.dup(1), os.dup(2))
    try:
        with logs.capture_logs(["run", "step"]):
            assert sys.stdout is stdout and sys.stderr is stderr
            assert os.path.samestat(os.fstat(1), os.fstat(fds[0]))
    finally:
        for fd in fds:
            os.close(fd)
    assert not any(tmp_path.rglob("*"))


def test_tick_logs_older_than_keep_days_are_deleted(tmp_path: Path) -> None:
    old, recent = tmp_path / "repo" / "s" / "1.err", tmp_path / "repo" / "s" / "2.err"
    for path in (old, recent):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    three_days_ago = time.time() - 3 * 86400
    os.utime(old, (three_days_ago, three_days_ago))
    logs = TickLogs(base_dir=str(tmp_path), keep_days=2)
    with logs.open_log_stream(["repo", "s", "3"], ComputeIOType.STDERR):
        pass
    assert not old.exists() and recent.exists()
