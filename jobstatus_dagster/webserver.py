"""The Dagster UI behind a door: dagster-webserver's app wrapped in a guard.

dagster-webserver has no authentication, and it executes GraphQL mutations sent as GET: any web
page the operator opens could launch backfills with an ``<img>`` tag, and a foreign ``Host``
header (DNS rebinding) is answered too. The guard refuses those requests before Dagster sees
them; browsers on the UI's own origin and clients without a browser (the GraphQL client of
``jobstatus reload``, curl) pass. It does not authenticate: in production a reverse proxy does
(deploy/Caddyfile), and viewers get a ``--read-only`` webserver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# A navigation (a link followed from a chat or a mail) may come from another site; nothing else.
NAVIGATION_MODES = ("navigate",)


def local_hosts(port: int) -> list[str]:
    """The Host values of a browser on this machine talking to ``port``."""
    return [f"{host}:{port}" for host in LOCAL_HOSTS]


def _is_mutation(query: str) -> bool:
    """Whether a GraphQL document holds a mutation; what does not parse is left to Dagster,
    which refuses it anyway."""
    from graphql import GraphQLError, OperationType, parse
    from graphql.language import OperationDefinitionNode

    try:
        document = parse(query)
    except GraphQLError:
        return False
    return any(
        isinstance(node, OperationDefinitionNode) and node.operation is OperationType.MUTATION
        for node in document.definitions
    )


@dataclass(frozen=True)
class Door:
    """Which requests reach the UI: those addressed to one of ``hosts`` (``name[:port]`` as a
    browser writes the Host header), from the UI's own origin or from no browser at all."""

    hosts: frozenset[str]

    @classmethod
    def of(cls, hosts: Iterable[str]) -> Door:
        return cls(frozenset(h.strip().lower() for h in hosts if h.strip()))

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            f"{scheme}://{host}" for host in self.hosts for scheme in ("http", "https")
        )

    def refusal(
        self, method: str, path: str, query_string: str, headers: Mapping[str, str]
    ) -> str | None:
        """Why the request must not reach Dagster, or None. ``headers``: lower-case names."""
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return f"foreign Host header {host!r}"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return f"cross-site request (Origin {origin!r})"
        site = headers.get("sec-fetch-site", "none")
        graphql = path.rstrip("/").endswith("/graphql")
        if site not in ("same-origin", "none"):
            navigation = (
                method in ("GET", "HEAD")
                and headers.get("sec-fetch-mode") in NAVIGATION_MODES
                and not graphql
            )
            if not navigation:
                return f"cross-site request (Sec-Fetch-Site {site})"
        if graphql and method in ("GET", "HEAD"):
            queries = parse_qs(query_string).get("query", [])
            if any(_is_mutation(q) for q in queries):
                return "GraphQL mutation sent as GET (the UI sends mutations as POST)"
        return None

    def wrap(self, app):
        """``app`` (ASGI) behind the door."""
        return _Guarded(app, self)


class _Guarded:
    """ASGI middleware: a refused HTTP request gets 403 with the reason; a refused websocket is
    closed before it is accepted (the server answers 403)."""

    def __init__(self, app, door: Door) -> None:
        self.app = app
        self.door = door

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope.get("method", "GET")
        reason = self.door.refusal(
            method, scope["path"], scope.get("query_string", b"").decode("latin-1"), headers
        )
        if reason is None:
            return await self.app(scope, receive, send)
        logging.getLogger("jobstatus.webserver").warning(
            "refused %s %s: %s", method, scope["path"], reason
        )
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return None
        body = f"refused: {reason}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return None


@contextlib.asynccontextmanager
async def _lifespan(_app) -> AsyncIterator[None]:
    # As dagster-webserver's own: a cancelled lifespan on Ctrl-C/SIGTERM is the normal end.
    with contextlib.suppress(asyncio.CancelledError):
        yield


def serve(
    workspace: Path, host: str, port: int, door: Door, *, read_only: bool, path_prefix: str = ""
) -> None:
    """dagster-webserver's app, as its CLI builds it, served behind ``door`` until SIGINT or
    SIGTERM. Built from dagster-webserver's own pieces (checked against 1.13.27; the topology
    test serves the UI through this function)."""
    import dagster as dg
    import uvicorn
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.app import create_app_from_workspace_process_context
    from dagster_webserver.version import __version__

    instance = dg.DagsterInstance.get()
    # dagster-webserver's defaults: 15 s statement timeout, connections recycled hourly.
    instance.optimize_for_webserver(15000, 3600, 20)
    with WorkspaceProcessContext(
        instance,
        WorkspaceFileTarget(paths=[str(workspace)]),
        version=__version__,
        read_only=read_only,
    ) as context:
        app = create_app_from_workspace_process_context(context, path_prefix, lifespan=_lifespan)
        logging.getLogger("jobstatus.webserver").warning(
            "Dagster UI%s on http://%s:%s%s for Host %s",
            " (read-only)" if read_only else "",
            host,
            port,
            path_prefix,
            ", ".join(sorted(door.hosts)),
        )
        uvicorn.run(door.wrap(app), host=host, port=port, log_level="warning")
