"""Passwords stay off command lines and out of printed lines: bench.redact, the CLI's errors, a real run's `ps`.

The run test needs the PostgreSQL server at 127.0.0.1:5432; it trusts loopback logins, so the
passwords given here are never checked, only followed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.redact import mask, move_passwords, password_env
from bench.workers import spawn_workers
from tests.bench.helpers import cli_env, main_in_process
from tests.bench.services import (
    create_database,
    db_url,
    drop_database,
    postgres_available,
)

SECRET = "Sekr3t-Pw-9c1e"


def test_mask_hides_the_password_of_every_url_in_a_line():
    line = (
        f"cannot reach postgresql+psycopg://optuna:{SECRET}@db:5432/optuna nor "
        f"'http://bob:{SECRET}@mlflow:5000' (timeout)"
    )
    assert mask(line) == (
        "cannot reach postgresql+psycopg://optuna:***@db:5432/optuna nor 'http://bob:***@mlflow:5000' (timeout)"
    )
    # nothing to hide: a user without password, a port, an @ in a path, a journal path
    for text in ("postgresql://optuna@db/optuna", "http://mlflow:5000/a@b", "sqlite:///x.db", "optuna.journal"):
        assert mask(text) == text


def test_passwords_move_from_urls_to_the_variables_their_clients_read():
    assert password_env("postgresql+psycopg://optuna:p%40ss@db:5432/optuna") == (
        "postgresql+psycopg://optuna@db:5432/optuna",
        {"PGPASSWORD": "p@ss"},
    )  # percent-decoded for libpq
    assert password_env("http://bob:pw@mlflow:5000") == (
        "http://mlflow:5000",
        {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "pw"},
    )
    assert password_env("postgresql://optuna@db/optuna") == ("postgresql://optuna@db/optuna", {})
    argv = [
        "--study",
        "smoke",
        "--storage",
        f"postgresql://optuna:{SECRET}@db/o",
        f"--tracking-uri=http://bob:{SECRET}@h:5000",
    ]
    clean, env = move_passwords(argv)
    assert clean == ["--study", "smoke", "--storage", "postgresql://optuna@db/o", "--tracking-uri=http://h:5000"]
    assert env == {"PGPASSWORD": SECRET, "MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": SECRET}


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_spawned_workers_get_the_password_in_their_environment_not_their_argv(tmp_path):
    # A study name that does not exist: each worker exits 2 at once, after it was seen.
    argv = [
        "--study",
        "no-such-study",
        "--storage",
        f"postgresql://optuna:{SECRET}@127.0.0.1:1/optuna",
        "--tracking-uri",
        f"http://bob:{SECRET}@127.0.0.1:1",
    ]
    procs = spawn_workers(argv, 3, 1, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE)
    try:
        assert len(procs) == 2
        for p in procs:  # Popen returns after exec: /proc holds the worker's own command line
            cmd, env = _cmdline(p.pid), _environ(p.pid)
            assert "bench.run" in cmd and "postgresql://optuna@127.0.0.1:1/optuna" in cmd and SECRET not in cmd
            assert (env["PGPASSWORD"], env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (
                SECRET,
                "bob",
                SECRET,
            )
    finally:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 2 and b"unknown study 'no-such-study'" in err


def test_error_lines_mask_the_password(tmp_path, capfd, monkeypatch):
    # exit 3: a service that cannot be reached (infrastructure), 2: bad input (README, exit codes)
    cases = [
        (
            ["--storage", f"postgresql://optuna:{SECRET}@127.0.0.1:1/optuna"],
            "cannot reach the Optuna storage postgresql://optuna:***@127.0.0.1:1/optuna",
            3,
        ),
        (
            ["--storage", f"mongodb://optuna:{SECRET}@127.0.0.1/optuna"],
            "--storage 'mongodb://optuna:***@127.0.0.1/optuna': unsupported scheme 'mongodb'",
            2,
        ),
        (
            ["--tracking-uri", f"http://bob:{SECRET}@127.0.0.1:1"],
            "cannot reach the MLflow tracking server http://127.0.0.1:1",
            3,
        ),
    ]
    for args, expected, code in cases:
        # in this process: test_run's bad-input table runs these checks through the real subprocess too
        rc, out, err = main_in_process(
            "bench.run", ["--study", "smoke", "--no-progress", "--workers", "1", *args], capfd, monkeypatch, tmp_path
        )
        assert rc == code, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
        assert SECRET not in out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def _tree(root: int) -> list[int]:
    """root and every descendant process, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


@pytest.mark.slow
@pytest.mark.postgres
def test_ps_shows_no_password_during_a_run_with_the_password_in_the_environment(tmp_path):
    """A two-worker run on PostgreSQL with PGPASSWORD and MLFLOW_TRACKING_PASSWORD set: no process's
    command line holds either, and the spawned worker has them in its environment."""
    if not postgres_available():
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")
    name = create_database("vaebench_test_ps")
    storage = db_url(name).replace("postgresql://", "postgresql+psycopg://")
    env = {**cli_env(), "PGPASSWORD": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET + "-mlflow"}
    args = [
        "--study",
        "smoke",
        "--n-trials",
        "2",
        "--epochs",
        "1",
        "--no-baselines",
        "--no-progress",
        "--workers",
        "2",
        "--threads",
        "1",
        "--storage",
        storage,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, str] = {}
    environs: dict[int, dict[str, str]] = {}
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in _tree(proc.pid):
                try:
                    cmd, env_now = _cmdline(pid), _environ(pid)
                except OSError:
                    continue  # ended meanwhile
                if cmd:  # a process that has ended (a zombie) shows an empty one
                    seen[pid] = cmd
                    environs[pid] = env_now
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        drop_database(name)
    assert proc.returncode == 0, err[-3000:]
    runs = {pid: cmd for pid, cmd in seen.items() if "bench.run" in cmd}
    assert len(runs) == 2, seen  # this process and the worker it spawned
    assert not [cmd for cmd in seen.values() if SECRET in cmd], seen
    worker = next(pid for pid, cmd in runs.items() if "--worker-index 1" in cmd)
    assert environs[worker]["PGPASSWORD"] == SECRET
    assert SECRET not in out + err
    assert "study smoke: 2/2 trials finished" in out
