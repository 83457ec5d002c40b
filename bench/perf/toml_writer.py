"""A TOML writer for study files read with tomllib: tables, strings, numbers, booleans, arrays, inline tables.

bench.perf.scale writes a study's copy with it, from the data of the validated spec (the stdlib only reads TOML).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else _string(key)


def _string(s: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's; DEL is the one control character JSON leaves as it is."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return repr(x) if math.isfinite(x) else ("inf" if x > 0 else "-inf")  # repr: shortest round-trip, TOML syntax


SCALARS: dict[type, Callable[[Any], str]] = {
    bool: lambda b: "true" if b else "false",
    int: repr,
    float: _float,
    str: _string,
}


def value(v: Any) -> str:
    """One TOML value: a scalar, an array, or an inline table."""
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + " }" if v else "{}"
    write = SCALARS.get(type(v))
    if write is None:
        raise TypeError(f"cannot write a {type(v).__name__} as TOML")
    return write(v)


def dumps(doc: dict[str, Any]) -> str:
    """The TOML text of `doc`: tomllib.loads(dumps(doc)) == doc. Nested dicts become [a.b] tables."""
    lines: list[str] = []
    _table(doc, (), lines)
    return "\n".join(lines).strip("\n") + "\n"


def _table(table: dict[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    pairs = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if path and (pairs or len(pairs) == len(table)):  # a table holding only tables needs no header of its own
        lines += ["", "[" + ".".join(_key(k) for k in path) + "]"]
    lines += [f"{_key(k)} = {value(v)}" for k, v in pairs.items()]
    for k, v in table.items():
        if isinstance(v, dict):
            _table(v, (*path, k), lines)
