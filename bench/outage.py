"""Waiting out outages: the one retry helper that the Optuna storage and the MLflow tracker call through.

`Outage(service, timeout_s).call(fn, ...)` retries fn while it fails for want of the service (connection
refused or reset, a timeout, a 502-504), with backoff; it prints one line when an outage starts and one
when it ends, and past `timeout_s` (--outage-timeout) raises InfrastructureError (exit code 3).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bench.errors import InfrastructureError

DEFAULT_TIMEOUT_S = 600  # --outage-timeout: long enough for a server restart or a database failover
FIRST_DELAY_S = 1.0  # the first wait after a failed call; doubled each time, up to MAX_DELAY_S
MAX_DELAY_S = 30.0
# fragments of the messages of a service that is down or restarting (lower case), anywhere in the
# exception's chain: psycopg/libpq, SQLAlchemy, requests/urllib3 as MLflow's client words them, sqlite
TRANSIENT = (
    "connection refused", "connection reset", "connection aborted", "timed out", "timeout expired",
    "max retries exceeded", "server closed the connection", "could not connect", "connection failed",
    "connection is closed", "connection is lost", "connection was closed", "terminating connection",
    "consuming input failed", "remote end closed", "database is locked", "temporarily_unavailable",
    "error code 502", "error code 503", "error code 504", "temporary failure in name resolution",
    "failed with timeout exception", "the database system is starting up", "the database system is shutting down",
)  # fmt: skip
_giving_up = threading.Event()  # set once any service's window has passed: the process is ending, stop waiting
T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """Whether `exc` (or an exception in its chain) says the service is unreachable, not that the call is wrong."""
    return _outage_cause(exc) is not None


def _outage_cause(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that says the service is unreachable (Optuna's and MLflow's wrappers
    say less: "An exception is raised during the commit"), or None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)) or any(s in str(e).lower() for s in TRANSIENT):
            return e
        if getattr(e, "connection_invalidated", False):
            return e.__cause__ or e.__context__ or e
        e = e.__cause__ or e.__context__
    return None


def _reason(exc: BaseException) -> str:
    cause = _outage_cause(exc) or exc
    text = " ".join((str(cause).strip().splitlines() or [""])[0].split())
    return (text[:160] + "...") if len(text) > 160 else text or type(cause).__name__


class Outage:
    """The outage state of one service, shared by the threads that call it (a trial and its heartbeat)."""

    def __init__(self, service: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.service = service  # how the lines name it, e.g. "the MLflow tracking server http://..."
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._since: float | None = None  # time.monotonic() of the first failed call of the current outage

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs), retried through an outage of up to timeout_s."""
        delay = FIRST_DELAY_S
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not transient(exc):
                    raise
                waited = time.monotonic() - self._begin(exc)
                if _giving_up.is_set() or waited >= self.timeout_s:
                    _giving_up.set()
                    raise InfrastructureError(
                        f"{self.service} has been unreachable for {waited:.0f} s "
                        f"(--outage-timeout {self.timeout_s:.0f}): "
                        f"{_reason(exc)}; rerun the same command once it is back: finished trials are kept "
                        "and the interrupted ones are queued again"
                    ) from exc
                time.sleep(max(0.0, min(delay, MAX_DELAY_S, self.timeout_s - waited)))
                delay *= 2
                continue
            self._end()
            return result

    def beat(self, fn: Callable[..., Any], *args: Any) -> None:
        """fn(*args) once, for a periodic call (a heartbeat): a failure for want of the service is skipped."""
        try:
            fn(*args)
        except Exception as exc:
            if not transient(exc):
                raise
            self._begin(exc)
            return
        self._end()

    def _begin(self, exc: BaseException) -> float:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                print(
                    f"outage: cannot reach {self.service} ({_reason(exc)}); waiting for it for up to "
                    f"{self.timeout_s:.0f} s (--outage-timeout)",
                    file=sys.stderr,
                    flush=True,
                )
            return self._since

    def _end(self) -> None:
        if self._since is None:  # unlocked read: the common case, no outage, costs nothing
            return
        with self._lock:
            if self._since is not None:
                print(
                    f"outage over: {self.service} answers again after {time.monotonic() - self._since:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                self._since = None
