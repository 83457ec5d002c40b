"""Checks docker-compose.yml, the Dockerfile, .dockerignore and .env.example without a Docker engine.
Validates the compose file against the Compose Specification schema, then asserts its promises."""

import base64
import configparser
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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"
AUTH_INI = ROOT / "docker" / "mlflow" / "basic_auth.ini"
# The variables .env must set (no default): the PostgreSQL superuser's and each service role's
# password, MLflow's admin password and Flask secret key, and the workers' MLflow password.
SECRETS = {
    "POSTGRES_PASSWORD",
    "OPTUNA_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "DASHBOARD_DB_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SECRET_KEY",
    "MLFLOW_WORKER_PASSWORD",
}

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
    """The compose file as `docker compose` sees it with .env.example copied to .env and filled in."""
    env = dict(env_example, **{name: f"not-a-real-{name.lower()}" for name in SECRETS})
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


def test_interpolation_needs_only_the_secrets(compose, env_example):
    # With .env.example as .env and the secrets filled in, every reference resolves.
    env = dict(env_example, **{name: "pw" for name in SECRETS})
    resolved = _interpolate_tree(compose, env)
    left = [s for s in _strings(resolved) if "${" in s]
    # Only the healthcheck's `$${...}` survives, for the container's shell, and those
    # variables are set in that container.
    assert left == [" ".join(resolved["services"]["postgres"]["healthcheck"]["test"][1:])]
    in_container = set(re.findall(r"\$\{(\w+)\}", left[0]))
    assert in_container == {"POSTGRES_USER", "OPTUNA_DB"}
    assert in_container <= resolved["services"]["postgres"]["environment"].keys()
    # Without .env, the defaults cover everything but the secrets, which stop Compose; so
    # does any one secret left empty.
    with pytest.raises(KeyError):
        _interpolate_tree(compose, {})
    for name in SECRETS:
        with pytest.raises(KeyError, match=name):
            _interpolate_tree(compose, dict(env, **{name: ""}))


def test_env_example_lists_every_variable_and_repeats_the_defaults(compose, env_example):
    refs = [r for s in _strings(compose) for r in _references(s)]
    assert env_example.keys() == {name for name, _ in refs}
    required = {name for name, op in refs if op in (None, ":?", "?")}
    assert required == SECRETS
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
    assert {k: v.pop() for k, v in defaults.items()} == {k: env_example[k] for k in defaults}


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
    # Every setting named like a secret is exactly a reference to one required variable.
    secrets = {}
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                m = re.fullmatch(r"\$\{(\w+):\?[^}]*\}", value)
                assert m and m[1] in SECRETS, (name, key, value)
                secrets[(name, key)] = m[1]
    # Followed through interpolation, each secret lands in those settings and nowhere else:
    # every client gets its password from the environment (PGPASSWORD for libpq,
    # MLFLOW_TRACKING_PASSWORD for MLflow's client), no URL or command line carries one.
    sentinels = {name: f"Sentinel-{name}-7f3a" for name in SECRETS}
    resolved = _interpolate_tree(compose, dict(env_example, **sentinels))
    holders = {}
    for name, service in resolved["services"].items():
        for key, value in (service.get("environment") or {}).items():
            for secret, sentinel in sentinels.items():
                if value == sentinel:
                    holders[(name, key)] = secret
        rest = {k: v for k, v in service.items() if k != "environment"}
        assert not [s for s in _strings(rest) for v in sentinels.values() if v in s], name
    assert holders == secrets
    # Least privilege: each service holds only the secrets it needs; the superuser's password
    # only the database itself, MLflow's admin password only the server and the one-shot job
    # that makes the workers' user.
    assert holders == {
        ("postgres", "POSTGRES_PASSWORD"): "POSTGRES_PASSWORD",
        ("postgres", "OPTUNA_DB_PASSWORD"): "OPTUNA_DB_PASSWORD",
        ("postgres", "MLFLOW_DB_PASSWORD"): "MLFLOW_DB_PASSWORD",
        ("postgres", "DASHBOARD_DB_PASSWORD"): "DASHBOARD_DB_PASSWORD",
        ("mlflow", "PGPASSWORD"): "MLFLOW_DB_PASSWORD",
        ("mlflow", "MLFLOW_AUTH_ADMIN_PASSWORD"): "MLFLOW_ADMIN_PASSWORD",
        ("mlflow", "MLFLOW_FLASK_SERVER_SECRET_KEY"): "MLFLOW_SECRET_KEY",
        ("mlflow-worker-user", "MLFLOW_TRACKING_PASSWORD"): "MLFLOW_ADMIN_PASSWORD",
        ("mlflow-worker-user", "WORKER_PASSWORD"): "MLFLOW_WORKER_PASSWORD",
        ("optuna-schema", "PGPASSWORD"): "OPTUNA_DB_PASSWORD",
        ("worker", "PGPASSWORD"): "OPTUNA_DB_PASSWORD",
        ("worker", "MLFLOW_TRACKING_PASSWORD"): "MLFLOW_WORKER_PASSWORD",
        ("optuna-dashboard", "PGPASSWORD"): "DASHBOARD_DB_PASSWORD",
    }
    urls = [s for s in _strings(resolved) if "://" in s]
    assert urls and all(urlparse(u).password is None for u in urls), urls
    # The basic-auth config file is committed, so it holds no secret either.
    auth = configparser.ConfigParser()
    auth.read(AUTH_INI)
    assert not [k for k in auth["mlflow"] if re.search(r"password|secret", k)]
    assert urlparse(auth["mlflow"]["database_uri"]).password is None


def test_each_service_logs_in_to_postgres_as_its_own_role(resolved):
    """The superuser is no service's login: workers as optuna, MLflow as mlflow, the dashboard read-only."""
    pg_env = resolved["services"]["postgres"]["environment"]
    roles = {k: pg_env[k] for k in ("OPTUNA_ROLE", "MLFLOW_ROLE", "DASHBOARD_ROLE")}
    assert roles == {"OPTUNA_ROLE": "optuna", "MLFLOW_ROLE": "mlflow", "DASHBOARD_ROLE": "optuna_dashboard"}
    svc = resolved["services"]
    auth = configparser.ConfigParser()
    auth.read(AUTH_INI)
    logins = {
        "worker": urlparse(_option(svc["worker"]["command"], "--storage")),
        "optuna-schema": urlparse(svc["optuna-schema"]["environment"]["OPTUNA_STORAGE"]),
        "mlflow": urlparse(_option(svc["mlflow"]["command"], "--backend-store-uri")),
        "mlflow auth": urlparse(auth["mlflow"]["database_uri"]),
        "optuna-dashboard": urlparse(svc["optuna-dashboard"]["command"][-1]),
    }
    assert {name: (u.username, u.path.lstrip("/")) for name, u in logins.items()} == {
        "worker": ("optuna", pg_env["OPTUNA_DB"]),
        "optuna-schema": ("optuna", pg_env["OPTUNA_DB"]),
        "mlflow": ("mlflow", pg_env["MLFLOW_DB"]),
        "mlflow auth": ("mlflow", pg_env["MLFLOW_AUTH_DB"]),
        "optuna-dashboard": ("optuna_dashboard", pg_env["OPTUNA_DB"]),
    }
    assert pg_env["POSTGRES_USER"] not in {u.username for u in logins.values()}


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
        "postgresql+psycopg",
        "postgres",
        5432,
        "/mlflow",
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
    # Basic-auth, configured by the committed ini (mounted read-only) and the environment.
    assert _option(command, "--app-name") == "basic-auth"
    ini = svc["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert f"./docker/mlflow/basic_auth.ini:{ini}:ro" in svc["volumes"]
    assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= svc[
        "environment"
    ].keys()


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
        "mlflow-worker-user": {"condition": "service_completed_successfully"},
    }
    # The workers log in to MLflow as the user the one-shot job makes, not as the admin.
    job = resolved["services"]["mlflow-worker-user"]
    assert job["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert (
        worker["environment"]["MLFLOW_TRACKING_USERNAME"] == job["environment"]["WORKER_USERNAME"] == "vaebench-worker"
    )
    assert (
        job["environment"]["MLFLOW_TRACKING_USERNAME"]
        == resolved["services"]["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_USERNAME"]
    )
    assert job["environment"]["MLFLOW_TRACKING_URI"] == _option(command, "--tracking-uri")
    # The schema job and the worker share the image and the storage URL.
    schema_job = resolved["services"]["optuna-schema"]
    assert schema_job["build"] == worker["build"]
    assert schema_job["environment"]["OPTUNA_STORAGE"] == _option(command, "--storage")


def test_dashboard_is_optional_and_reads_the_optuna_database(resolved):
    dash = resolved["services"]["optuna-dashboard"]
    assert dash["profiles"] == ["dashboard"]
    assert dash["command"][0] == "optuna-dashboard"
    assert _option(dash["command"], "--host") == "0.0.0.0"
    # The Optuna database, as the read-only role.
    theirs = urlparse(resolved["services"]["optuna-schema"]["environment"]["OPTUNA_STORAGE"])
    assert urlparse(dash["command"][-1])._replace(netloc="") == theirs._replace(netloc="")
    assert urlparse(dash["command"][-1]).username == "optuna_dashboard"
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
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


@dataclass(frozen=True)
class Scratch:
    """Throw-away databases and roles for one test, named uniquely (roles are server-wide)."""

    optuna_db: str
    mlflow_db: str
    auth_db: str
    optuna_role: str
    mlflow_role: str
    dashboard_role: str

    @property
    def databases(self) -> list[str]:
        return [self.optuna_db, self.mlflow_db, self.auth_db]

    @property
    def roles(self) -> list[str]:
        return [self.optuna_role, self.mlflow_role, self.dashboard_role]

    def url(self, role: str, db: str) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:5432/{db}"

    def init_env(self) -> dict[str, str]:
        """The environment docker compose gives the init script, pointed at the local server."""
        return dict(
            os.environ,
            PGHOST="127.0.0.1",
            POSTGRES_USER="postgres",
            POSTGRES_DB="postgres",
            OPTUNA_DB=self.optuna_db,
            MLFLOW_DB=self.mlflow_db,
            MLFLOW_AUTH_DB=self.auth_db,
            OPTUNA_ROLE=self.optuna_role,
            MLFLOW_ROLE=self.mlflow_role,
            DASHBOARD_ROLE=self.dashboard_role,
            OPTUNA_DB_PASSWORD="optuna-Pw-1",
            MLFLOW_DB_PASSWORD="mlflow-Pw-2",
            DASHBOARD_DB_PASSWORD="dash-Pw-3",
        )


@pytest.fixture
def scratch():
    """Names for throw-away databases and roles, dropped afterwards whatever happened."""
    _postgres_or_skip()
    tag = f"vaebench_test_{uuid.uuid4().hex[:10]}"
    s = Scratch(f"{tag}_optuna", f"{tag}_mlflow", f"{tag}_auth", f"{tag}_optuna", f"{tag}_mlflow", f"{tag}_dashboard")
    yield s
    for name in s.databases:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for role in s.roles:
        _psql(f'DROP ROLE IF EXISTS "{role}"')


def _run_init_script(s: Scratch):
    script = ROOT / "docker" / "postgres" / "init-databases.sh"
    return subprocess.run([str(script)], env=s.init_env(), capture_output=True, text=True, check=True)


@pytest.mark.postgres
def test_init_script_creates_the_roles_and_their_databases_and_can_run_again(scratch):
    s = scratch
    quoted = ", ".join(f"'{n}'" for n in s.databases)
    owners = (
        f"SELECT d.datname || ':' || r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
        f"WHERE d.datname IN ({quoted}) ORDER BY 1"
    )
    assert _psql(owners) == []
    _run_init_script(s)
    expected = sorted(
        [f"{s.optuna_db}:{s.optuna_role}", f"{s.mlflow_db}:{s.mlflow_role}", f"{s.auth_db}:{s.mlflow_role}"]
    )
    assert _psql(owners) == expected
    roles = ", ".join(f"'{r}'" for r in s.roles)
    # login roles, and none may act as superuser, make roles or databases, or skip row security
    powers = (
        f"SELECT rolname || ':' || rolcanlogin || rolsuper || rolcreaterole || rolcreatedb || rolreplication "
        f"|| rolbypassrls FROM pg_roles WHERE rolname IN ({roles}) ORDER BY 1"
    )
    assert _psql(powers) == sorted(f"{r}:truefalsefalsefalsefalsefalse" for r in s.roles)
    _run_init_script(s)  # a restarted volume or a manual re-run (also rotates the passwords)
    assert _psql(owners) == expected
    # An empty password stops the script before it changes anything.
    env = dict(s.init_env(), DASHBOARD_DB_PASSWORD="")
    script = ROOT / "docker" / "postgres" / "init-databases.sh"
    failed = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "DASHBOARD_DB_PASSWORD is empty" in failed.stderr


@pytest.mark.postgres
def test_service_roles_have_only_the_privileges_they_need(scratch):
    """The roles the init script makes, each used as its service would use it.

    The local server trusts every loopback connection (trust auth), so no password is checked
    here; what is tested is each role's privileges, which do not depend on how it logged in.
    """
    import optuna
    import psycopg
    import sqlalchemy

    s = scratch
    _run_init_script(s)
    # The workers' role creates Optuna's tables in its own database and writes a study there.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = optuna.storages.RDBStorage(s.url(s.optuna_role, s.optuna_db))
    study = optuna.create_study(study_name="roles", storage=rdb)
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 2), n_trials=1)
    rdb.engine.dispose()  # the scratch database is dropped with FORCE afterwards, but say goodbye

    # The dashboard's role reads that study as optuna-dashboard does (an RDBStorage) ...
    dash_url = s.url(s.dashboard_role, s.optuna_db)
    storage = optuna.storages.RDBStorage(dash_url)
    summaries = storage.get_all_studies()
    assert [st.study_name for st in summaries] == ["roles"]
    assert [t.params for t in storage.get_all_trials(summaries[0]._study_id)] == [{"x": 1.0}]
    # ... and cannot write: not through Optuna, not with SQL.
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "not-allowed")
    assert isinstance(refused.value.__cause__, sqlalchemy.exc.ProgrammingError)
    assert "permission denied for table studies" in str(refused.value.__cause__)
    storage.engine.dispose()
    plain = dash_url.replace("+psycopg", "")
    for sql in (
        "INSERT INTO studies (study_name) VALUES ('x')",
        "DELETE FROM trials",
        "UPDATE studies SET study_name = 'x'",
        "CREATE TABLE notes (x int)",
        "DROP TABLE trials",
    ):
        with psycopg.connect(plain) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
    assert _psql("SELECT count(*) FROM studies", s.optuna_db) == ["1"]

    # No service role may even connect to another service's database.
    for role, db in [
        (s.optuna_role, s.mlflow_db),
        (s.optuna_role, s.auth_db),
        (s.dashboard_role, s.mlflow_db),
        (s.mlflow_role, s.optuna_db),
        ("vaebench_no_such_role_" + uuid.uuid4().hex[:6], s.optuna_db),
    ]:
        with pytest.raises(psycopg.OperationalError, match="permission denied|does not exist"):
            psycopg.connect(s.url(role, db).replace("+psycopg", "")).close()
    # The mlflow role may in both of its own, and create tables there (MLflow's migrations do).
    for db in (s.mlflow_db, s.auth_db):
        with psycopg.connect(s.url(s.mlflow_role, db).replace("+psycopg", "")) as conn:
            conn.execute("CREATE TABLE probe (x int)")


@pytest.mark.postgres
def test_optuna_schema_job_creates_the_tables_the_workers_share(resolved, scratch):
    _run_init_script(scratch)
    job = resolved["services"]["optuna-schema"]
    # the job's URL, pointed at the local server and the scratch names
    ours = urlparse(job["environment"]["OPTUNA_STORAGE"])
    assert (ours.username, ours.path) == ("optuna", "/optuna")
    env = dict(os.environ, OPTUNA_STORAGE=scratch.url(scratch.optuna_role, scratch.optuna_db))
    assert job["command"][0] == "python"
    subprocess.run([sys.executable, *job["command"][1:]], env=env, check=True, timeout=120)
    owned = _psql(
        f"SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner = '{scratch.optuna_role}'",
        scratch.optuna_db,
    )
    assert {"studies", "trials", "version_info", "alembic_version"} <= set(owned)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url, host=None, auth=None):
    """The HTTP status of GET url (None while nothing listens); auth is (user, password) for basic auth."""
    headers = {"Host": host} if host else {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
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
def test_mlflow_command_serves_with_basic_auth_host_checks_and_artifacts(resolved, scratch, tmp_path, monkeypatch):
    """Runs the compose file's `mlflow server` command (basic-auth) for real, pointed at local stand-ins.

    Then the one-shot job makes the workers' user, and bench.tracking logs a run as that user.
    The local PostgreSQL trusts loopback connections: the database passwords are not checked here.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from bench.errors import BenchError
    from bench.tracking import Tracker, check_tracking_uri

    _run_init_script(scratch)
    svc = resolved["services"]["mlflow"]
    command = list(svc["command"])
    port = _free_port()
    # Swap in what only exists inside the stack: the database host, the volume and the
    # listening address; one server process keeps the start short on a small machine.
    local = {
        "--backend-store-uri": scratch.url(scratch.mlflow_role, scratch.mlflow_db),
        "--artifacts-destination": str(tmp_path / "mlartifacts"),
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    for flag, value in local.items():
        command[command.index(flag) + 1] = value
    # The committed auth config, with its database on the local server (as the mlflow role).
    auth = configparser.ConfigParser()
    auth.read(AUTH_INI)
    auth["mlflow"]["database_uri"] = scratch.url(scratch.mlflow_role, scratch.auth_db)
    with open(tmp_path / "basic_auth.ini", "w") as f:
        auth.write(f)
    env = {**os.environ, **svc["environment"], "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runners: five fewer processes
    admin = (svc["environment"]["MLFLOW_AUTH_ADMIN_USERNAME"], svc["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"])
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - the server writes to it until the teardown closes it
    # Its own process group: `mlflow server` starts uvicorn and job-runner children,
    # which the teardown ends together with it.
    server = subprocess.Popen(
        [*command, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _status(f"{base}/health") != 200:  # /health needs no login: the compose healthcheck
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server not healthy after 180 s"
            time.sleep(1)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        # Anyone without the password is turned away, whatever host they name.
        assert _status(search, host="mlflow:5000") == 401
        assert _status(search, auth=(admin[0], "wrong-password-123")) == 401
        assert _status(search, host="mlflow:5000", auth=admin) == 200  # a worker
        assert _status(search, host=f"127.0.0.1:{port}", auth=admin) == 200  # the browser
        assert _status(search, host="evil.example", auth=admin) == 403

        # The one-shot job makes the workers' user as the admin; run again, it keeps it.
        job = resolved["services"]["mlflow-worker-user"]
        job_env = {**os.environ, **job["environment"], "MLFLOW_TRACKING_URI": base}
        script = ROOT / job["volumes"][0].split(":")[0]
        made = subprocess.run([sys.executable, str(script)], env=job_env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0 and "created MLflow user 'vaebench-worker'" in made.stdout, made.stderr[-2000:]
        again = subprocess.run([sys.executable, str(script)], env=job_env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "exists" in again.stdout, again.stderr[-2000:]

        # A worker logs through bench.tracking as that user; its artifact goes through the server.
        worker = resolved["services"]["worker"]["environment"]
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", worker["MLFLOW_TRACKING_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", worker["MLFLOW_TRACKING_PASSWORD"])
        tracker = Tracker(base, "compose-check")
        run_id = tracker.create_parent_run("compose-check", {"lr": 0.001}, {}, {"note.txt": "served"})
        tracker.set_status(run_id, "FINISHED")
        run = tracker.client.get_run(run_id)
        assert run.data.params == {"lr": "0.001"} and run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        stored = list((tmp_path / "mlartifacts").rglob("note.txt"))
        assert [p.read_text() for p in stored] == ["served"]
        # ... and is no admin: it cannot make users.
        with pytest.raises(MlflowException, match="403 != 200. Response body: 'Permission denied'"):
            AuthServiceClient(base).create_user("intruder", "intruder-password-1")
        # A wrong password is refused by the client, and by bench.run's checks before it writes anything.
        check_tracking_uri(base)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            MlflowClient(base).get_run(run_id)
        with pytest.raises(
            BenchError, match=r"refused user 'vaebench-worker' with MLFLOW_TRACKING_PASSWORD \(401 Unauthorized\)"
        ):
            check_tracking_uri(base)
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        with pytest.raises(BenchError, match=r"refused a request with no user \(401"):
            check_tracking_uri(base)
    finally:
        _end_group(server)
        log.close()
