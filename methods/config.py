"""Validation helpers for the config dataclasses of methods, tokenizers and the harness.

Every ``Config.check(key)`` raises ``ConfigError`` naming the key, the bad value and what is
allowed, so that a bad config fails before any work. They live in the shared layer because the
method and tokenizer configs use them; the harness's own sections use the same ones.
"""
from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what is allowed."""


def check_choice(key: str, value: Any, allowed: Iterable) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} is out of range; it must be {bound}")


def check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}={value!r} is out of range; it must be in [{low}, {high}]")


def check_scale_list(key: str, sides: Any, allow_empty: bool = False) -> None:
    """The one rule for a scale list (``patch_nums``): at least two integer sides, starting at 1,
    strictly increasing. ``allow_empty``: [] means "the method's own list"."""
    if isinstance(sides, (list, tuple)) and not sides and allow_empty:
        return
    if not isinstance(sides, (list, tuple)) or not all(isinstance(p, int) for p in sides):
        raise ConfigError(f"{key}={sides!r}: a scale list is a list of sides, e.g. [1, 2, 3, 4, 6, 8]")
    sides = list(sides)
    if len(sides) < 2 or sides[0] != 1 or any(b <= a for a, b in zip(sides, sides[1:])):
        raise ConfigError(f"{key}={sides}: a scale list starts at 1 and increases, with at least two sides, "
                          "e.g. [1, 2, 3, 4, 6, 8]")


def check_group_widths(key: str, widths: Iterable[int], groups: int) -> None:
    """Every width of a GroupNorm'd encoder/decoder level divides into ``groups``."""
    for width in widths:
        if width % groups:
            raise ConfigError(f"{key}: width {width} is not divisible by {key}.norm_num_groups={groups}")
