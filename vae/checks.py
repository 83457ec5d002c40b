"""Checks a frozen config in vae against the types and bounds its fields declare.

A config calls `check_fields(self)` in `__post_init__`; a bad value raises one ValueError
naming the field, what is allowed and the value given ("latent_dim must be an integer in [1, 4096], got 0").
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import BaseMetadata, GroupedMetadata


def check_fields(config: Any) -> None:
    """Raise ValueError for the first field whose value its annotation does not allow."""
    for name, rule in _rules(type(config)).items():
        value = getattr(config, name)
        if not rule.allows(value):
            raise ValueError(f"{name} must be {rule.allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class _Rule:
    """What one field accepts: a base type (int, float, bool or a Literal), bounds, and whether None is allowed."""

    base: Any
    bounds: dict[str, Any]  # ge/gt/le/lt from annotated_types metadata
    optional: bool

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if get_origin(self.base) is Literal:
            return isinstance(value, str) and value in get_args(self.base)
        # a bool is an int to Python, never a count or a rate here
        if self.base is bool or type(value) is bool:
            return type(value) is bool and self.base is bool
        if not isinstance(value, int if self.base is int else (int, float)):
            return False
        b = self.bounds
        return (
            ("ge" not in b or value >= b["ge"])
            and ("gt" not in b or value > b["gt"])
            and ("le" not in b or value <= b["le"])
            and ("lt" not in b or value < b["lt"])
        )  # NaN fails every comparison

    @property
    def allowed(self) -> str:
        if get_origin(self.base) is Literal:
            choices = get_args(self.base)
            text = f"{choices[0]!r} or {choices[1]!r}" if len(choices) == 2 else f"one of {sorted(choices)}"
        elif self.base is bool:
            text = "True or False"
        else:
            text = number_phrase(self.base, self.bounds)
        return f"{text} or absent" if self.optional else text


def number_phrase(base: type, bounds: dict[str, Any]) -> str:
    """'an integer in [1, 4096]', 'a number in (0, 10]', 'a non-negative integer', 'a positive number'."""
    kind = "an integer" if base is int else "a number"
    b = bounds
    low, high = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    if low is not None and high is not None:
        return f"{kind} in {'[' if 'ge' in b else '('}{low}, {high}{']' if 'le' in b else ')'}"
    if high is None and low == 0:
        return f"{'a non-negative' if 'ge' in b else 'a positive'} {kind.split()[-1]}"
    if high is None and low == 1 and "ge" in b and base is int:
        return "a positive integer"
    return kind


def bounds_of(metadata: Any) -> dict[str, Any]:
    """The ge/gt/le/lt bounds in annotated_types metadata (Interval, Ge, Le, ...)."""
    bounds: dict[str, Any] = {}
    for m in metadata:
        for item in m if isinstance(m, GroupedMetadata) else (m,):
            if isinstance(item, BaseMetadata):
                bounds.update({k: getattr(item, k) for k in ("ge", "gt", "le", "lt") if hasattr(item, k)})
    return bounds


@functools.cache
def _rules(cls: type) -> dict[str, _Rule]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: _rule(hints[f.name]) for f in dataclasses.fields(cls)}


def _rule(tp: Any) -> _Rule:
    optional = False
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional, tp = len(args) < len(get_args(tp)), args[0]
    meta: list[Any] = []
    if get_origin(tp) is Annotated:
        tp, *meta = get_args(tp)
    return _Rule(tp, bounds_of(meta), optional)
