"""Validators every text field that reaches PostgreSQL shares."""
from __future__ import annotations

from marshmallow import ValidationError


def no_nul_characters(value: str) -> None:
    """Refuse text with a NUL character: PostgreSQL text cannot hold one, and no field needs it."""
    if "\x00" in value:
        raise ValidationError("contains a NUL character")
