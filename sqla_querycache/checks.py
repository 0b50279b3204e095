"""Argument checks shared by the constructors: one rule, one message per kind of value.

Every check raises :class:`~.exc.ConfigurationError` naming the argument and
the value it got. ``bool`` is never accepted as a number (``True`` is an
``int`` to Python, never a sensible size or timeout).
"""

from __future__ import annotations

import math
from typing import Any

from .exc import ConfigurationError


def integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An ``int`` (not ``bool``) in ``[minimum, maximum]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigurationError(f"{name} must be an int {bound}, got {value!r}")
    return value


def seconds(name: str, value: Any, *, positive: bool = True, maximum: float | None = None) -> float:
    """A finite ``int`` or ``float`` (not ``bool``) of seconds: > 0 (or >= 0), <= maximum."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
        and (maximum is None or value <= maximum)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        if maximum is not None:
            bound += f" and <= {maximum:g}"
        raise ConfigurationError(f"{name} must be a finite number of seconds {bound}, "
                                 f"got {value!r}")  # fmt: skip
    return float(value)


def flag(name: str, value: Any) -> bool:
    """Exactly ``True`` or ``False`` (a truthy string or 1 is a mistake worth telling)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value
