"""Helpers for reading vendor request parameters."""
from __future__ import annotations

import codecs
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from mappers.report import MappingError

UTF8_BOM = b"\xef\xbb\xbf"
# SMS vendors name the 16-bit SMS alphabet UCS-2, which Python knows as big-endian UTF-16.
CHARSET_ALIASES = {"ucs-2": "utf-16-be", "ucs2": "utf-16-be", "iso-10646-ucs-2": "utf-16-be"}
# Codecs in which ASCII bytes mean something else: a value that reads as UTF-8 text is not in them.
WIDE_CODECS = {"utf-16", "utf-16-be", "utf-16-le", "utf-32", "utf-32-be", "utf-32-le"}


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
    charset = _codec_name(charset)
    wide = charset in WIDE_CODECS
    # Some vendors write a UTF-8 byte order mark first; left in, it would hide the first name.
    for pair in encoded.removeprefix(UTF8_BOM).split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            # Names are ASCII whatever the charset: a 16-bit one applies to some values only.
            fields.setdefault(_decode_component(name, None), _decode_component(value, charset, wide))
    return fields


def _codec_name(charset: str | None) -> str | None:
    if not charset:
        return None
    charset = CHARSET_ALIASES.get(charset.lower(), charset)
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return charset  # decoding fails the same way and falls back


def _decode_component(component: bytes, charset: str | None, wide: bool = False) -> str:
    raw = unquote_to_bytes(component.replace(b"+", b" "))
    # An id or a number next to a 16-bit text is plain ASCII: read as UTF-16 it would be garbage.
    if charset and not (wide and _reads_as_utf8_text(raw)):
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


# Bytes UTF-16 text is full of (the high byte of Latin, Greek, Cyrillic, Hebrew, Arabic letters)
# and UTF-8 text never has.
_CONTROL_BYTES = frozenset(range(0x20)) - {0x09, 0x0A, 0x0D}


def _reads_as_utf8_text(raw: bytes) -> bool:
    if not _CONTROL_BYTES.isdisjoint(raw):
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
