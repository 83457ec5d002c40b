"""Real services for the scale-out tests and benchmark: throwaway PostgreSQL databases and an `mlflow server`.

`create_database()` / `drop_database(name)` talk to the server at PG_URL; `MlflowServer(...).start()`
runs `mlflow server` on a free loopback port until `.stop()`, with its backend on such a database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import storage
from bench.storage import database_url

PG_URL = os.environ.get("VAEBENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")  # server, no database
SERVER_START_S = 180.0  # `mlflow server` takes ~30 s to answer /health on a loaded 2-core machine


def db_url(name: str, base: str = PG_URL) -> str:
    return database_url(base, name)


def postgres_available(base: str = PG_URL, timeout_s: int = 3) -> bool:
    import psycopg

    try:
        with psycopg.connect(db_url("postgres", base), connect_timeout=timeout_s):
            return True
    except psycopg.OperationalError:
        return False


def create_database(prefix: str = "vaebench_test", base: str = PG_URL) -> str:
    """A new empty database with a unique name (bench.storage.create_database); returns the name."""
    return storage.create_database(base, prefix).rsplit("/", 1)[1]


def drop_database(name: str, base: str = PG_URL) -> None:
    """Drop the database even if a killed worker or the server still holds connections to it."""
    storage.drop_database(db_url(name, base))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class MlflowServer:
    """`mlflow server` with its backend store on PostgreSQL and artifacts proxied to a folder."""

    backend_uri: str
    artifacts: Path
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = SERVER_START_S) -> MlflowServer:
        """Start the server and wait until GET /health answers 200 (RuntimeError with its log otherwise)."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.artifacts.parent / f"mlflow-server-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts),
            "--workers",
            "1",
        ]
        # no background job runners (five more Python processes): the tests log runs only
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "wb") as log:
            # its own process group, so stop() ends the server and the uvicorn child it forks
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if healthy(self.url):
                return self
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(
            f"mlflow server did not answer {self.url}/health within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # == the group id (start_new_session)
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        # the uvicorn worker may outlive the `mlflow server` parent by a moment
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TcpProxy:
    """A loopback TCP proxy to `target` that can drop every connection and refuse new ones, then restore.

    For the fault tests: a database that goes away mid-trial (a failover, a network cut) and comes back,
    without stopping the shared PostgreSQL server. `port` is where clients connect.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by drop()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Close the listening socket (new connections are refused) and cut every open connection."""
        if self._listener is not None:
            with contextlib.suppress(
                OSError
            ):  # wakes the accept() blocked on it (close() alone would leave it accepting)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> TcpProxy:
        return self.start()

    def stop(self) -> None:
        self.drop()
