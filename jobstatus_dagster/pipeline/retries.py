"""Which failures are worth retrying: transient database errors only (dropped connections,
serialization failures, deadlocks). Everything else fails the op at once, naming the window."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg

from jobstatus_dagster.core.plan import Window

TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

# serialization_failure, deadlock_detected, admin/crash shutdown, cannot_connect_now,
# and the connection_exception class.
TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}
)


def is_transient(error: BaseException) -> bool:
    """True for errors a plain retry can cure; walks the SQLAlchemy → psycopg chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "connection_invalidated", False):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if sqlstate in TRANSIENT_SQLSTATES:
            return True
        if isinstance(current, psycopg.OperationalError) and sqlstate is None:
            return True  # connection refused/lost before the server said anything
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


@contextmanager
def transient_errors(window: Window) -> Iterator[None]:
    """Let transient errors through to the op's RetryPolicy; turn the rest into a Failure that
    names the window and the cause, without retries."""
    try:
        yield
    except (dg.Failure, dg.RetryRequested):
        raise
    except Exception as error:
        if is_transient(error):
            raise
        raise dg.Failure(
            description=f"{window.label}: {type(error).__name__}: {error}"[:2000],
            metadata={"window": window.label, "cause": type(error).__name__},
            allow_retries=False,
        ) from error
