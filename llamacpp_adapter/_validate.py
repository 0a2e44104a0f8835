"""Checks of the numbers a caller gives (counts, durations, bounded numbers), with one
wording for each fault. A ``bool`` is never taken for a number, though Python's ``int``
would take it."""

from __future__ import annotations

import math

__all__ = ["count", "is_int", "number", "optional_int", "seconds"]


def is_int(value: object) -> bool:
    """Whether *value* is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def count(name: str, value: object, *, minimum: int = 1, unit: str = "") -> int:
    """*value*, an ``int`` of at least *minimum* (*unit* names what it counts, for the
    message).

    Raises:
        TypeError: it is not an ``int``.
        ValueError: it is below *minimum*.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int")
    assert isinstance(value, int)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{f' {unit}' if unit else ''}")
    return value


def optional_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    """Check that *value* is None or an ``int`` in [*minimum*, *maximum*].

    Raises:
        TypeError: it is neither.
        ValueError: it is out of bounds.
    """
    if value is None:
        return
    if not is_int(value):
        raise TypeError(f"{name} must be an int or None")
    assert isinstance(value, int)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}")


def number(name: str, value: object, low: float, high: float) -> float:
    """*value* as a float, a finite number in [*low*, *high*].

    Raises:
        TypeError: it is not a number.
        ValueError: it is NaN, infinite or out of bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    result = float(value)
    if math.isnan(result) or math.isinf(result) or not low <= result <= high:
        raise ValueError(f"{name} must be a finite number in [{low}, {high}]")
    return result


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    """*value*, a finite duration in seconds: not negative, or above 0 when *positive*.

    Raises:
        TypeError: it is not a number.
        ValueError: it is NaN, infinite, negative, or 0 where it must be positive.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    if not (value > 0 if positive else value >= 0) or not value < math.inf:
        kind = "positive" if positive else "not negative"
        raise ValueError(f"{name} must be finite and {kind}")
    return float(value)
