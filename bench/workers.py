"""Worker processes of a study: who this process is, the local workers it starts, and who writes the ending.

The objective stamps `worker_id()` on each trial it runs; the study loop judges a local trial's
worker dead with `dead_local_worker`; `bench.run` starts local workers and claims the finalizer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import optuna

from bench.redact import move_passwords


def worker_id() -> str:
    """host:pid of this process, stored on each trial it runs.

    The host part also names the PID namespace: containers that share the machine's hostname
    (host networking) each have their own pids, so one must not judge another's pids dead.
    """
    try:
        ns = os.readlink("/proc/self/ns/pid")  # 'pid:[4026531836]'
        host = f"{socket.gethostname()}/{ns.strip('pid:[]')}"
    except OSError:  # not Linux
        host = socket.gethostname()
    return f"{host}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_local_worker(worker: str) -> bool:
    """True when `worker` (a worker_id, host:pid) was a process on this host that no longer exists."""
    host, _, pid = worker.rpartition(":")
    return host == worker_id().rsplit(":", 1)[0] and pid.isdigit() and not pid_alive(int(pid))


def spawn_workers(argv: list[str], n: int, threads: int, **popen: Any) -> list[subprocess.Popen]:
    """Start n-1 more local `bench.run` workers with the same arguments (this process is worker 0).

    `popen` goes to subprocess.Popen (cwd, env, stdout): bench.perf.scale starts a worker with its own log.
    A password in a URL flag goes to the worker's environment, not its argv, where `ps` would show it.
    """
    argv, secrets = move_passwords(argv)
    env = {**(popen.pop("env", None) or os.environ), **secrets}
    procs = []
    for i in range(1, n):
        cmd = [
            sys.executable,
            "-m",
            "bench.run",
            *argv,
            "--workers",
            "1",
            "--threads",
            str(threads),
            "--worker-index",
            str(i),
            "--no-finalize",
            "--no-progress",
        ]
        procs.append(subprocess.Popen(cmd, env=env, **popen))
    return procs


def strip_flags(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """argv without the given flags (flag -> takes a value)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in flags:
            skip = flags[name] and "=" not in a
            continue
        out.append(a)
    return out


def claim_finalizer(
    study: optuna.Study, finished: int, settle_s: float = 1.0, stale_s: float = 1800.0, stage: str = ""
) -> str | None:
    """The claim key if this worker should write the end-of-study results, else None.

    Workers that finish together each write their id, wait, and read back: the last
    writer wins. One arriving later finds the claim taken (unless its holder has not
    marked it done within `stale_s`). A new claim is due when the study has grown (`finished`:
    its COMPLETE and PRUNED trials), or when `stage` (what the ending includes, e.g. its
    replicate seeds) is one not done yet.
    """
    key = f"finalized_at_{finished}{stage}"
    held = study.user_attrs.get(key, "")
    if held.startswith("done") or (held and not _claim_is_stale(held, stale_s)):
        return None
    me = f"{worker_id()}:{uuid.uuid4().hex[:8]}@{time.time():.0f}"
    study.set_user_attr(key, me)
    time.sleep(settle_s)
    return key if study.user_attrs.get(key) == me else None


def release_finalizer(study: optuna.Study, key: str) -> None:
    """Mark the end-of-study results written."""
    study.set_user_attr(key, f"done by {worker_id()}")


def abandon_finalizer(study: optuna.Study, key: str) -> None:
    """Give the claim up unfinished (the ending failed or was stopped): the next worker or rerun takes it at once."""
    study.set_user_attr(key, f"abandoned by {worker_id()}")


def _claim_is_stale(held: str, stale_s: float) -> bool:
    """A claim (host:pid:nonce@time) is stale when its worker, on this host, is gone, or it is older than stale_s."""
    who, _, stamp = held.rpartition("@")
    if who.count(":") >= 2 and dead_local_worker(who.rsplit(":", 1)[0]):
        return True
    try:
        return time.time() - float(stamp) > stale_s
    except ValueError:
        return True
