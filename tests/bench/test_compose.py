"""Checks docker-compose.yml, the Dockerfile, .dockerignore and .env.example without a Docker engine.
Validates the compose file against the Compose Specification schema, then asserts its promises."""

import copy
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR, $$.
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --- helpers -------------------------------------------------------------------------


def _strings(node):
    """Every string in a parsed YAML tree (values only; keys of mappings excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _references(text):
    """(name, op) for each variable reference in text; op is None when there is no default."""
    for m in _VAR.finditer(text):
        if m["escaped"]:
            continue
        yield (m["braced"] or m["bare"]), m["op"]


def interpolate(text, env):
    """Compose's variable interpolation, for the forms listed at _VAR; raises KeyError when
    a required variable (`:?`, `?`) is missing, as `docker compose` refuses to start."""

    def one(m):
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        return value or ""

    return _VAR.sub(one, text)


def _interpolate_tree(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    return node


def _read_env_file(path):
    """KEY=VALUE lines of a dotenv file, comments and blank lines skipped."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def _option(command, flag):
    """The value after `flag` in an exec-form command list."""
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def _dockerfile_stages(text):
    """{stage name: [instruction lines]} with backslash continuations joined."""
    stages, current = {}, None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m[2] or m[1]
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example():
    return _read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def resolved(compose, env_example):
    """The compose file as `docker compose` sees it with .env.example copied to .env."""
    env = dict(env_example, POSTGRES_PASSWORD="not-a-real-password")
    return _interpolate_tree(compose, env)


# --- the file is valid Compose -------------------------------------------------------


def test_compose_file_matches_the_compose_specification_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []

    # The schema is strict enough to catch a misspelt key or a wrong condition.
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["restrat"] = "no"
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "healthy"
    assert len(list(validator.iter_errors(broken))) == 2


def test_interpolation_needs_only_the_password(compose, env_example):
    # With .env.example as .env and a password, every reference resolves.
    env = dict(env_example, POSTGRES_PASSWORD="pw")
    resolved = _interpolate_tree(compose, env)
    left = [s for s in _strings(resolved) if "${" in s]
    # Only the healthcheck's `$${...}` survives, for the container's shell, and those
    # variables are set in that container.
    assert left == [" ".join(resolved["services"]["postgres"]["healthcheck"]["test"][1:])]
    in_container = set(re.findall(r"\$\{(\w+)\}", left[0]))
    assert in_container == {"POSTGRES_USER", "OPTUNA_DB"}
    assert in_container <= resolved["services"]["postgres"]["environment"].keys()
    # Without .env, the defaults cover everything but the password, which stops Compose.
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate_tree(compose, {})
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate_tree(compose, env_example)  # copied but left empty


def test_env_example_lists_every_variable_and_repeats_the_defaults(compose, env_example):
    refs = [r for s in _strings(compose) for r in _references(s)]
    assert env_example.keys() == {name for name, _ in refs}
    required = {name for name, op in refs if op in (None, ":?", "?")}
    assert required == {"POSTGRES_PASSWORD"}
    assert required <= env_example.keys()
    # No secret is committed: the required values are left empty.
    assert all(env_example[name] == "" for name in required)
    # Every optional variable is documented too, with the default the compose file uses,
    # so copying .env.example changes nothing but the password.
    defaults = {}
    for s in _strings(compose):
        for m in _VAR.finditer(s):
            if m["op"] in (":-", "-"):
                defaults.setdefault(m["braced"], set()).add(m["arg"])
    assert all(len(values) == 1 for values in defaults.values()), defaults
    assert {k: v.pop() for k, v in defaults.items()} == {
        k: env_example[k] for k in defaults
    }


def test_env_file_is_ignored_by_git_and_docker():
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in gitignore
    dockerignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything is excluded, then only sources are let back in.
    assert dockerignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in dockerignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "vae", "bench", "studies"}


# --- network and credentials ---------------------------------------------------------


def test_every_published_port_binds_to_loopback(resolved):
    published = []
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                published.append((name, port.get("host_ip")))
            else:  # short syntax, HOST_IP:HOST_PORT:CONTAINER_PORT
                published.append((name, str(port).rsplit(":", 2)[0] if str(port).count(":") == 2 else None))
    assert published, "nothing published: the MLflow UI would be unreachable"
    assert {name for name, _ in published} == {"postgres", "mlflow", "optuna-dashboard"}
    assert all(host == "127.0.0.1" for _, host in published), published
    mlflow_ports = resolved["services"]["mlflow"]["ports"]
    assert mlflow_ports == ["127.0.0.1:5000:5000"]


def test_no_password_is_written_in_the_file(compose, env_example):
    # Every setting named like a secret is exactly a reference to the required variable.
    secrets = {}
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                secrets[(name, key)] = value
    for where, value in secrets.items():
        assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", value), (where, value)
    # Followed through interpolation, the password lands in those settings and nowhere
    # else: every client that talks to PostgreSQL gets it as PGPASSWORD, no URL or
    # command line carries it.
    sentinel = "Sentinel-Pw-7f3a"
    resolved = _interpolate_tree(compose, dict(env_example, POSTGRES_PASSWORD=sentinel))
    holders = set()
    for name, service in resolved["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if value == sentinel:
                holders.add((name, key))
        rest = {k: v for k, v in service.items() if k != "environment"}
        assert not [s for s in _strings(rest) if sentinel in s], name
    assert holders == set(secrets) == {
        ("postgres", "POSTGRES_PASSWORD"),
        ("mlflow", "PGPASSWORD"),
        ("optuna-schema", "PGPASSWORD"),
        ("worker", "PGPASSWORD"),
        ("optuna-dashboard", "PGPASSWORD"),
    }
    urls = [s for s in _strings(resolved) if "://" in s]
    assert urls and all(urlparse(u).password is None for u in urls), urls


# --- services ------------------------------------------------------------------------


def test_postgres_has_a_named_volume_a_healthcheck_and_the_init_script(compose):
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:")
    volume, _, target = pg["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in compose["volumes"]
    test = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in test and "--host 127.0.0.1" in test
    init = [v for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert len(init) == 1 and init[0].endswith(":ro")
    script = ROOT / init[0].split(":")[0]
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR
    assert set(pg["environment"]) >= {"POSTGRES_USER", "POSTGRES_PASSWORD", "OPTUNA_DB", "MLFLOW_DB"}


def test_mlflow_serves_artifacts_from_postgres_and_allows_its_service_name(resolved):
    import mlflow.cli
    from mlflow.server.security_utils import is_allowed_host_header

    svc = resolved["services"]["mlflow"]
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = svc["command"]
    assert command[:2] == ["mlflow", "server"]
    # Every flag exists in the installed mlflow 3.x (a renamed flag fails the server start).
    known = {opt for p in mlflow.cli.server.params for opt in p.opts + p.secondary_opts}
    flags = [arg for arg in command[2:] if arg.startswith("--")]
    assert set(flags) <= known, set(flags) - known
    store = urlparse(_option(command, "--backend-store-uri"))
    assert (store.scheme, store.hostname, store.port, store.path) == (
        "postgresql+psycopg", "postgres", 5432, "/mlflow",
    )
    assert "--serve-artifacts" in command
    destination = _option(command, "--artifacts-destination")
    assert f"mlartifacts:{destination}" in svc["volumes"]
    assert _option(command, "--host") == "0.0.0.0" and _option(command, "--port") == "5000"
    # MLflow's own host-header check, fed the allow-list: the workers' Host header
    # (netloc of --tracking-uri) and the browser's pass, any other host is refused.
    allowed = _option(command, "--allowed-hosts").split(",")
    worker_host = urlparse(_option(resolved["services"]["worker"]["command"], "--tracking-uri")).netloc
    for host in (worker_host, "mlflow", "127.0.0.1:5000", "localhost:5000", "127.0.0.1:5001"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example", "evil.example:5000", "mlflow:5001", "10.0.0.8:5000"):
        assert not is_allowed_host_header(allowed, host), host
    assert "/health" in " ".join(svc["healthcheck"]["test"])


def test_worker_can_be_scaled_and_runs_the_study(compose, resolved):
    raw, worker = compose["services"]["worker"], resolved["services"]["worker"]
    assert "container_name" not in raw and "ports" not in raw
    assert raw["restart"].split(":")[0] == "on-failure"
    command = worker["command"]
    assert command[:3] == ["python", "-m", "bench.run"]
    assert _option(command, "--study") == "latent"
    storage = urlparse(_option(command, "--storage"))
    assert (storage.scheme, storage.hostname, storage.path) == ("postgresql+psycopg", "postgres", "/optuna")
    assert _option(command, "--tracking-uri") == "http://mlflow:5000"
    assert "--no-progress" in command
    assert raw["volumes"] == ["${VAE_DATA_DIR:-./data}:/data:ro"]
    assert worker["environment"]["VAE_DATA_DIR"] == "/data"
    assert worker["depends_on"] == {
        "optuna-schema": {"condition": "service_completed_successfully"},
        "mlflow": {"condition": "service_healthy"},
    }
    # The schema job and the worker share the image and the storage URL.
    schema_job = resolved["services"]["optuna-schema"]
    assert schema_job["build"] == worker["build"]
    assert schema_job["environment"]["OPTUNA_STORAGE"] == _option(command, "--storage")


def test_dashboard_is_optional_and_reads_the_optuna_database(resolved):
    dash = resolved["services"]["optuna-dashboard"]
    assert dash["profiles"] == ["dashboard"]
    assert dash["command"][0] == "optuna-dashboard"
    assert _option(dash["command"], "--host") == "0.0.0.0"
    assert dash["command"][-1] == resolved["services"]["optuna-schema"]["environment"]["OPTUNA_STORAGE"]
    # Every other service starts with a plain `docker compose up`.
    assert [n for n, s in resolved["services"].items() if "profiles" in s] == ["optuna-dashboard"]


def test_dockerfile_builds_each_target_the_compose_file_names(compose):
    stages = _dockerfile_stages((ROOT / "Dockerfile").read_text())
    targets = {s["build"]["target"] for s in compose["services"].values() if "build" in s}
    assert targets == {"mlflow", "worker", "dashboard"} and targets <= stages.keys()
    # The worker is the last stage, so a plain `docker build .` gives it.
    assert list(stages)[-1] == "worker"
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    worker = stages["worker"]
    torch = next(i for i, line in enumerate(worker) if "--index-url" in line)
    project = next(i for i, line in enumerate(worker) if re.search(r"pip install \.(\s|$)", line))
    # CPU torch first, from the index given as a build argument, then the project.
    assert torch < project
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch' in worker[torch]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in worker
    assert any(line.startswith("USER ") and line != "USER root" for line in worker)
    # The MLflow image is the same major release as the mlflow whose flags were checked above.
    import importlib.metadata

    pinned = re.search(r"^ARG MLFLOW_VERSION=(\d+)\.\d+\.\d+$", text, re.M)
    assert pinned and pinned[1] == importlib.metadata.version("mlflow").split(".")[0] == "3"
    assert any("psycopg" in line for line in stages["mlflow"])


# --- against the real PostgreSQL on 127.0.0.1:5432 -----------------------------------


def _postgres_or_skip():
    if not shutil.which("psql"):
        pytest.skip("psql is not installed")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")


def _psql(sql, db="postgres"):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.split()


@pytest.fixture
def scratch_databases():
    """Names for throw-away databases, dropped afterwards whatever happened."""
    _postgres_or_skip()
    tag = uuid.uuid4().hex[:10]
    names = {"optuna": f"vaebench_test_{tag}_optuna", "mlflow": f"vaebench_test_{tag}_mlflow"}
    yield names
    for name in names.values():
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run_init_script(names):
    env = dict(
        os.environ, PGHOST="127.0.0.1", POSTGRES_USER="postgres", POSTGRES_DB="postgres",
        OPTUNA_DB=names["optuna"], MLFLOW_DB=names["mlflow"],
    )
    script = ROOT / "docker" / "postgres" / "init-databases.sh"
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, check=True)


@pytest.mark.postgres
def test_init_script_creates_both_databases_and_can_run_again(scratch_databases):
    names = scratch_databases
    quoted = ", ".join(f"'{n}'" for n in names.values())
    listed = f"SELECT datname FROM pg_database WHERE datname IN ({quoted}) ORDER BY 1"
    assert _psql(listed) == []
    first = _run_init_script(names)
    assert first.stdout.count("CREATE DATABASE") == 2
    assert _psql(listed) == sorted(names.values())
    second = _run_init_script(names)  # a restarted volume or a manual re-run
    assert "CREATE DATABASE" not in second.stdout
    assert _psql(listed) == sorted(names.values())


@pytest.mark.postgres
def test_optuna_schema_job_creates_the_tables_the_workers_share(resolved, scratch_databases):
    _run_init_script(scratch_databases)
    job = resolved["services"]["optuna-schema"]
    storage = f"postgresql+psycopg://postgres@127.0.0.1:5432/{scratch_databases['optuna']}"
    env = dict(os.environ, OPTUNA_STORAGE=storage)
    assert job["command"][0] == "python"
    subprocess.run([sys.executable, *job["command"][1:]], env=env, check=True, timeout=120)
    tables = _psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", scratch_databases["optuna"])
    assert {"studies", "trials", "version_info", "alembic_version"} <= set(tables)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url, host=None):
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet


def _end_group(process, grace_s=30):
    """SIGTERM to the process group `process` leads, SIGKILL to whatever is left after grace_s."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.postgres
def test_mlflow_command_serves_health_host_checks_and_artifacts(resolved, scratch_databases, tmp_path):
    """Runs the compose file's `mlflow server` command for real, pointed at local stand-ins."""
    from mlflow import MlflowClient

    _run_init_script(scratch_databases)
    command = list(resolved["services"]["mlflow"]["command"])
    port = _free_port()
    # Swap in what only exists inside the stack: the database host, the volume and the
    # listening address; one server process keeps the start short on a small machine.
    local = {
        "--backend-store-uri": f"postgresql+psycopg://postgres@127.0.0.1:5432/{scratch_databases['mlflow']}",
        "--artifacts-destination": str(tmp_path / "mlartifacts"),
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    for flag, value in local.items():
        command[command.index(flag) + 1] = value
    log = open(tmp_path / "server.log", "w")
    # Its own process group: `mlflow server` starts uvicorn and job-runner children,
    # which the teardown ends together with it.
    server = subprocess.Popen(
        [*command, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _status(f"{base}/health") != 200:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server not healthy after 180 s"
            time.sleep(1)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search, host="mlflow:5000") == 200  # a worker
        assert _status(search, host=f"127.0.0.1:{port}") == 200  # the browser
        assert _status(search, host="evil.example") == 403

        # A worker's artifact goes through the server into --artifacts-destination.
        client = MlflowClient(tracking_uri=base)
        run = client.create_run(client.create_experiment("compose-check"))
        (tmp_path / "note.txt").write_text("served")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.info.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        stored = list((tmp_path / "mlartifacts").rglob("note.txt"))
        assert [p.read_text() for p in stored] == ["served"]
    finally:
        _end_group(server)
        log.close()
