"""Helpers for reading vendor request parameters."""
from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from mappers.report import MappingError

UTF8_BOM = b"\xef\xbb\xbf"


def lower_keys(params: Mapping[str, str]) -> dict[str, str]:
    """Return the parameters with lower-cased names (vendors vary the letter case); the first of a name wins."""
    fields: dict[str, str] = {}
    for key, value in params.items():
        fields.setdefault(key.lower(), value)
    return fields


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


def phone_number(raw: str | None) -> str | None:
    """Return a trimmed phone number, restoring a leading `+` that arrived un-encoded (read as a space)."""
    value = (raw or "").strip()
    if value and raw.startswith(" ") and value.isascii() and value.isdigit():
        return "+" + value
    return value or None


def decode_form(encoded: bytes, charset: str | None = None) -> dict[str, str]:
    """Return the fields of a query string or URL-encoded body, the first of a repeated name winning.

    Vendors are not consistent about text encoding: a percent-escaped byte that is not UTF-8
    (a Latin-1 `%E4` for "ä") is read in the declared charset, else as Windows-1252, rather
    than kept escaped or dropped with the whole body.
    """
    fields: dict[str, str] = {}
    # Some vendors write a UTF-8 byte order mark first; left in, it would hide the first name.
    for pair in encoded.removeprefix(UTF8_BOM).split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            fields.setdefault(_decode_component(name, charset), _decode_component(value, charset))
    return fields


def _decode_component(component: bytes, charset: str | None) -> str:
    raw = unquote_to_bytes(component.replace(b"+", b" "))
    if charset:
        try:
            # A declared codec may yield lone surrogates (utf-7, unicode_escape), which cannot be stored.
            text = raw.decode(charset)
            text.encode("utf-8")
            return text
        except (UnicodeError, LookupError):
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")
