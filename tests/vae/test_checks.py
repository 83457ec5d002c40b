"""vae.checks: a config's declared types and bounds judge its values, and the message says what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Interval

from vae.checks import check_fields


@dataclass(frozen=True)
class Toy:
    count: Annotated[int, Interval(ge=1, le=10)] = 1
    rate: Annotated[float, Interval(gt=0, le=1)] = 0.5
    offset: Annotated[int, Ge(0)] = 0
    cap: Annotated[int, Ge(1)] | None = None
    mode: Literal["a", "b"] = "a"
    kind: Literal["x", "y", "z"] = "x"
    flag: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


def test_edges_and_ints_for_floats_are_accepted():
    Toy(count=10, rate=1, offset=0, cap=1, mode="b", kind="z", flag=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("count", 0, "count must be an integer in [1, 10], got 0"),
        ("count", 2.0, "count must be an integer in [1, 10], got 2.0"),
        ("count", True, "count must be an integer in [1, 10], got True"),  # a bool is never a count
        ("rate", 0.0, "rate must be a number in (0, 1], got 0.0"),
        ("rate", float("nan"), "rate must be a number in (0, 1], got nan"),
        ("rate", "0.5", "rate must be a number in (0, 1], got '0.5'"),
        ("offset", -1, "offset must be a non-negative integer, got -1"),
        ("cap", 0, "cap must be a positive integer or absent, got 0"),
        ("mode", "c", "mode must be 'a' or 'b', got 'c'"),
        ("kind", "w", "kind must be one of ['x', 'y', 'z'], got 'w'"),
        ("flag", 1, "flag must be True or False, got 1"),
    ],
)
def test_a_bad_value_names_the_field_the_allowed_values_and_the_value(field, value, message):
    with pytest.raises(ValueError) as err:
        Toy(**{field: value})
    assert str(err.value) == message
