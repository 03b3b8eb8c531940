"""Helpers for reading vendor request parameters."""
from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_to_bytes

from mappers.report import MappingError

UTF8_BOM = b"\xef\xbb\xbf"
# A codec that reads a byte order mark, and the order it must read without one (Python's would be
# the machine's): RFC 2781 and the Unicode standard make it big-endian.
BOM_LESS_ORDER = {"utf-16": ("utf-16-be", (codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)),
                  "utf-32": ("utf-32-be", (codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE))}
# A byte order mark that an explicitly ordered codec would keep as a leading U+FEFF.
ORDERED_BOMS = {"utf-16-be": codecs.BOM_UTF16_BE, "utf-16-le": codecs.BOM_UTF16_LE,
                "utf-32-be": codecs.BOM_UTF32_BE, "utf-32-le": codecs.BOM_UTF32_LE}
# Lower-cased names of the parameters that carry a message's text, across the built-in vendors.
TEXT_PARAMETERS = frozenset({"body", "message", "text", "content"})
# SMS vendors name the 16-bit SMS alphabet UCS-2, which Python knows as UTF-16: a byte order
# mark decides the order, as for UTF-16 (_decode_wide makes it big-endian without one).
CHARSET_ALIASES = {"ucs-2": "utf-16", "ucs2": "utf-16", "iso-10646-ucs-2": "utf-16",
                   "ucs-2be": "utf-16-be", "ucs-2le": "utf-16-le"}
# Codecs in which ASCII bytes mean something else: gateways use them for the text alone.
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


def decode_form(encoded: bytes, charset: str | None = None,
                text_parameters: frozenset[str] = TEXT_PARAMETERS) -> dict[str, str]:
    """Return the fields of a query string or URL-encoded body, the first of a repeated name winning.

    Vendors are not consistent about text encoding: a percent-escaped byte that is not UTF-8
    (a Latin-1 `%E4` for "ä") is read in the declared charset, else as Windows-1252, rather
    than kept escaped or dropped with the whole body. A 16-bit charset (UCS-2, UTF-16) is the
    message text's alone (`text_parameters`, lower-cased): the names, ids and numbers beside it
    are ASCII.
    """
    fields: dict[str, str] = {}
    codec = _codec_name(charset)
    wide = text_parameters if codec in WIDE_CODECS else frozenset()
    # Some vendors write a UTF-8 byte order mark first; left in, it would hide the first name.
    for pair in encoded.removeprefix(UTF8_BOM).split(b"&"):
        if pair:
            raw_name, _, raw_value = pair.partition(b"=")
            name = _decode_text(unquote_to_bytes(raw_name.replace(b"+", b" ")), None)
            value = unquote_to_bytes(raw_value.replace(b"+", b" "))
            if wide and name.lower() in wide:
                fields.setdefault(name, _decode_wide(value, codec))
            else:
                fields.setdefault(name, _decode_text(value, None if wide else codec))
    return fields


def decode_parts(parts: Iterable[tuple[str, bytes, str | None]]) -> dict[str, str]:
    """Return multipart fields from (name, raw bytes, declared charset) parts; the first of a name wins.

    Each value is read as decode_form reads a URL-encoded one: in its part's declared charset
    (a 16-bit one too, since it is that part's alone), else as UTF-8, else as Windows-1252.
    """
    fields: dict[str, str] = {}
    for name, raw, charset in parts:
        if name not in fields:
            codec = _codec_name(charset)
            fields[name] = _decode_wide(raw, codec) if codec in WIDE_CODECS else _decode_text(raw, codec)
    return fields


def _codec_name(charset: str | None) -> str | None:
    if not charset:
        return None
    charset = CHARSET_ALIASES.get(charset.lower(), charset)
    try:
        return codecs.lookup(charset).name
    except (LookupError, ValueError):  # unknown, or not a name at all (a NUL in it)
        return None  # read as undeclared: UTF-8, else Windows-1252


def _decode_text(raw: bytes, charset: str | None) -> str:
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


def _decode_wide(raw: bytes, codec: str) -> str:
    if codec in BOM_LESS_ORDER:
        big_endian, boms = BOM_LESS_ORDER[codec]
        if not raw.startswith(boms):
            codec = big_endian  # without a byte order mark, UTF-16 and UTF-32 are big-endian
    # A part cut inside a character (a split surrogate pair, an odd byte) keeps the rest of the text.
    return raw.removeprefix(ORDERED_BOMS.get(codec, b"")).decode(codec, errors="replace")
