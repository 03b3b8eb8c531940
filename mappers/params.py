"""Helpers for reading vendor request parameters."""
from __future__ import annotations

from collections.abc import Mapping

from mappers.report import MappingError


def lower_keys(params: Mapping[str, str]) -> dict[str, str]:
    """Return the parameters with lower-cased names; vendors vary the letter case."""
    return {key.lower(): value for key, value in params.items()}


def required(params: Mapping[str, str], name: str) -> str:
    """Return a parameter's trimmed value, or raise MappingError if missing or empty."""
    value = (params.get(name) or "").strip()
    if not value:
        raise MappingError(name, "is required" if name not in params else "must not be empty")
    return value


def optional(params: Mapping[str, str], name: str) -> str | None:
    """Return a parameter's trimmed value, or None when absent or empty."""
    value = (params.get(name) or "").strip()
    return value or None
