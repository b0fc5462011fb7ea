"""Checks of configuration values that raise :class:`ConfigError` naming the field, before any work starts."""

from __future__ import annotations

from numbers import Integral

from lightning_retrieval.errors import ConfigError


def positive_int(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1, else :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 0, else :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def positive_ints(name: str, values) -> list[int]:
    """Every entry of ``values`` a positive integer (e.g. ``ks``), and at least one entry."""
    values = list(values)
    if not values:
        raise ConfigError(f"{name} must not be empty")
    return [positive_int(f"{name}[{i}]", v) for i, v in enumerate(values)]
