"""Validators and clean-up every text field that reaches PostgreSQL shares."""
from __future__ import annotations

from marshmallow import ValidationError


def no_nul_characters(value: str) -> None:
    """Refuse text with a NUL character: PostgreSQL text cannot hold one, and no field needs it."""
    if "\x00" in value:
        raise ValidationError("contains a NUL character")


def storable_text(value: object) -> str:
    """Return the value as text PostgreSQL can hold: without NUL, lone surrogates replaced."""
    # A peer's answer may carry either (JSON allows "\u0000" and "\ud800"); written as it came, the
    # answer could not be recorded at all.
    return str(value).replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
