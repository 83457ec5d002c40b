"""Passwords kept out of every printed line and every command line the tool builds.

`mask(text)` hides the password of each URL in a line before it is printed (bench.errors does it
for every error); `move_passwords(argv)` takes them off a worker's argv and into its environment.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
# scheme://user:password@ ; a password holding '@' or '/' must be percent-encoded in a URL anyway
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)(?P<password>[^@/\s'\"]*)@")
# the user information at the start of a URL: scheme://user[:password]@
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*)(?::(?P<password>[^@/\s]*))?@")
# the flags whose value may be a URL with a password, and where the password goes instead
URL_FLAGS = ("--storage", "--tracking-uri")


def mask(text: str) -> str:
    """`text` with every URL's password replaced by ***: postgresql://optuna:***@host/db."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@" if m["password"] else m[0], str(text))


def split_password(url: str) -> tuple[str, str | None, str | None]:
    """(url without its password, its user, its password), both percent-decoded; None where absent."""
    m = _USERINFO.match(url)
    if not m:
        return url, None, None
    password = None if m["password"] is None else unquote(m["password"])
    return f"{m['scheme']}{m['user']}@{url[m.end() :]}", unquote(m["user"]) or None, password


def password_env(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its password, and the environment that gives it to the client instead.

    PostgreSQL: libpq (psycopg) reads PGPASSWORD when the URL has none. MLflow's client sends
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD as HTTP basic auth, and takes no user from
    the URL, so both move. Other URLs have no such variable and are left as they are.
    """
    clean, user, password = split_password(url)
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres") and password is not None:
        return clean, {"PGPASSWORD": password}
    if scheme in ("http", "https") and user is not None:
        host = f"{scheme}://{clean.split('@', 1)[1]}"
        env = {"MLFLOW_TRACKING_USERNAME": user}
        return host, env | ({"MLFLOW_TRACKING_PASSWORD": password} if password is not None else {})
    return url, {}


def move_passwords(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv with the passwords taken out of its URL flags, and the environment variables that carry them."""
    out, env = list(argv), {}
    for i, arg in enumerate(out):
        for flag in URL_FLAGS:
            if arg == flag and i + 1 < len(out):
                out[i + 1], found = password_env(out[i + 1])
                env |= found
            elif arg.startswith(flag + "="):
                value, found = password_env(arg[len(flag) + 1 :])
                out[i], env = f"{flag}={value}", env | found
    return out, env
