"""Map vendors declared in an operator's mapping file, and load and check that file.

The file (YAML or JSON, see ``vendor-mappings.example.yaml``) has two optional sections:
- ``vendors``: vendors without code, each naming its request parameters, time format, time
  zone and status table;
- ``overrides``: entries that replace or extend a built-in vendor's status table, keyed as
  that vendor's mapper documents.

``status_code`` carries the status parameter as sent; ``status_text`` the status text
parameter, else the status code. Use ``is_recognised`` to learn whether a status was listed.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from mappers import expertflow, genesys, twilio
from mappers.params import lower_keys, optional, phone_number
from mappers.report import (MAX_VENDOR_NAME_LENGTH, DeliveryReport, ErrorType, InboundMessage, MappingError,
                            Outcome, storable_status_code)
from mappers.rules import OutcomeRule, required_as_spelled, required_phone_number

BUILT_IN_VENDORS = ("sapdi", genesys.VENDOR, twilio.VENDOR, expertflow.VENDOR)
OVERRIDE_KEY_PATTERNS = {
    # SAP Digital Interconnect codes are written 0x4503; mappers/sapdi.py matches them so.
    "sapdi": re.compile(r"^0x[0-9a-f]{4}$"),
    genesys.VENDOR: genesys.STATUS_KEY_PATTERN,
    twilio.VENDOR: twilio.STATUS_KEY_PATTERN,
    expertflow.VENDOR: expertflow.STATUS_KEY_PATTERN,
}
# Vendor names become URL path segments: /vendors/<vendor>/delivery-reports.
VENDOR_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
EPOCH_UNITS_PER_SECOND = {"epoch": 1, "epoch_ms": 1000}
# Zone names that load on one machine only: "localtime" is that machine's own zone, if any.
MACHINE_ZONES = frozenset({"localtime"})

VENDOR_KEYS = ("parameters", "outcomes", "time_format", "timezone", "default_outcome", "inbound")
PARAMETER_KEYS = ("message_id", "status_code", "recipient", "status_text", "event_time")
INBOUND_KEYS = ("message_id", "source", "destination", "body")
ENTRY_KEYS = ("outcome", "error_type")


@dataclass(frozen=True)
class InboundFields:
    """Name the request parameters that carry a declared vendor's inbound message."""

    message_id: str
    source: str
    destination: str
    body: str


@dataclass(frozen=True)
class VendorMapping:
    """Declare how one vendor's requests are read; parameter names are matched ignoring case."""

    name: str
    message_id: str
    status_code: str
    outcomes: dict[str, OutcomeRule]
    default_outcome: OutcomeRule = (Outcome.UNKNOWN, None)
    recipient: str | None = None
    status_text: str | None = None
    event_time: str | None = None
    time_format: str | None = None
    zone: tzinfo = timezone.utc  # the file's `timezone`: the zone of times written without an offset
    inbound: InboundFields | None = None

    @property
    def body_parameters(self) -> frozenset[str]:
        """Return the lower-cased names of the parameters that carry a message text."""
        return frozenset({self.inbound.body.lower()} if self.inbound else ())

    @property
    def phone_parameters(self) -> frozenset[str]:
        """Return the lower-cased names of the parameters that carry a phone number."""
        names = [self.recipient, *((self.inbound.source, self.inbound.destination) if self.inbound else ())]
        return frozenset(name.lower() for name in names if name)


@dataclass(frozen=True)
class MappingFile:
    """Hold the declared vendors and the overrides of built-in tables, by vendor name."""

    vendors: dict[str, VendorMapping]
    overrides: dict[str, dict[str, OutcomeRule]]


class MappingFileError(Exception):
    """A mapping file cannot be used; the message names the file and the fault."""


class _Fault(Exception):
    """A fault at one place in the document, before the file name is known."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def map_delivery_report(mapping: VendorMapping, params: Mapping[str, str],
                        received_at: datetime) -> DeliveryReport:
    """Map a declared vendor's delivery report to a normalised report."""
    fields = lower_keys(params)
    status = _value(fields, mapping.status_code) or ""
    # default_outcome is for a status the table does not list; a report without one says nothing.
    outcome, error_type = (mapping.outcomes.get(status.lower(), mapping.default_outcome) if status
                           else (Outcome.UNKNOWN, None))
    return DeliveryReport(
        vendor_message_id=required_as_spelled(fields, mapping.message_id),
        recipient=phone_number(fields.get(mapping.recipient.lower())) if mapping.recipient else None,
        status_code=storable_status_code(status),
        status_text=_value(fields, mapping.status_text) or status,
        event_at=_event_time(mapping, fields) or received_at,
        outcome=outcome,
        error_type=error_type,
    )


def map_inbound_message(mapping: VendorMapping, params: Mapping[str, str],
                        received_at: datetime) -> InboundMessage:
    """Map a declared vendor's inbound message; MappingError if it declares none."""
    if mapping.inbound is None:
        raise MappingError("inbound", f"vendor {mapping.name!r} declares no inbound fields")
    fields = lower_keys(params)
    names = mapping.inbound
    return InboundMessage(
        vendor_message_id=required_as_spelled(fields, names.message_id),
        source=required_phone_number(fields, names.source),
        destination=required_phone_number(fields, names.destination),
        body=fields.get(names.body.lower()) or "",  # Whitespace in a body is content.
        received_at=received_at,
    )


def report_parameters(mapping: VendorMapping) -> dict[str, str]:
    """Return the parameters a declared vendor's report fields come from, to name them in a fault."""
    names = {"vendor_message_id": mapping.message_id, "status_code": mapping.status_code}
    return names | ({"recipient": mapping.recipient} if mapping.recipient else {})


def inbound_parameters(mapping: VendorMapping) -> dict[str, str]:
    """Return the parameters a declared vendor's inbound fields come from, to name them in a fault."""
    names = mapping.inbound
    if names is None:
        return {}
    return {"vendor_message_id": names.message_id, "source": names.source, "destination": names.destination}


def is_recognised(mapping: VendorMapping, params: Mapping[str, str]) -> bool:
    """Return whether the report's status value is listed in the vendor's table."""
    status = _value(lower_keys(params), mapping.status_code) or ""
    return status.lower() in mapping.outcomes


def parse_event_time(raw: str, time_format: str, zone: tzinfo = timezone.utc) -> datetime:
    """Parse a vendor time as naive UTC, one without an offset as zone's; ValueError if it does not match."""
    if time_format in EPOCH_UNITS_PER_SECOND:
        return _epoch_time(raw, time_format)
    parsed = _strptime_restoring_offset_plus(raw, time_format)
    # fold=0 (strptime's): a wall time that occurs twice as clocks go back is the first, summer-time
    # one; a wall time skipped as they go forward is read with the offset before the switch.
    local = parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)
    try:
        return local.astimezone(timezone.utc).replace(tzinfo=None)
    except OverflowError as error:  # e.g. 0001-01-01T00:00:00+0100 is before year 1 in UTC
        raise ValueError(str(error)) from None


def _epoch_time(raw: str, time_format: str) -> datetime:
    seconds = float(raw) / EPOCH_UNITS_PER_SECOND[time_format]
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError) as error:
        raise ValueError(str(error)) from None


def _strptime_restoring_offset_plus(raw: str, time_format: str) -> datetime:
    try:
        return _strptime(raw, time_format)
    except ValueError as error:
        # As for phone numbers: a `+` left un-encoded in a query string reads as a space, so
        # "...05+01:00" arrives as "...05 01:00". Retried once with the last such space a `+`.
        position = raw.rfind(" ", 0, len(raw) - 1)
        directives = {directive for directive, _ in FORMAT_PART.findall(time_format)}
        if "z" not in directives or position < 0 or not raw[position + 1].isdigit():
            raise
        try:
            return _strptime(f"{raw[:position]}+{raw[position + 1:]}", time_format)
        except ValueError:
            raise error from None


# The digits a numeric strptime field takes when written in full.
FIELD_WIDTHS = {"Y": 4, "y": 2, "m": 2, "d": 2, "H": 2, "I": 2, "M": 2, "S": 2, "j": 3}
# Fields that are digits only: one of these right after a fixed-width field runs into it.
NUMERIC_FIELDS = frozenset(FIELD_WIDTHS) | {"f"}
FORMAT_PART = re.compile(r"%(.)|([^%]+)")
# strptime's %f takes 1 to 6 digits, so run into the seconds a missing digit would go unseen
# ("...0405" + "12" read as .12): there it must be milliseconds (SSS, as myMSP writes) or
# microseconds (as strftime writes %f).
FRACTION_DIGITS = r"\d{3}(?:\d{3})?"
# Put where a fixed-width field runs into a numeric one, so that strptime reads the two apart.
PART_SEPARATOR = "\x1f"


@lru_cache(maxsize=64)
def _run_together_fields(time_format: str) -> tuple[re.Pattern, str] | None:
    """Return a pattern that cuts a time where its format runs numeric fields together, and the cut format.

    A fixed-width field followed directly by a numeric one must have all its digits. None when
    no such pair exists: then strptime alone reads the time.
    """
    parts = FORMAT_PART.findall(time_format)
    chunks: list[tuple[str, str]] = [("", "")]  # (pattern, format) of the pieces between cuts
    cut = False
    for index, (directive, literal) in enumerate(parts):
        following = parts[index + 1][0] if index + 1 < len(parts) else ""
        after_cut, cut = cut, directive in FIELD_WIDTHS and following in NUMERIC_FIELDS
        if literal or directive == "%":
            piece = (re.escape(literal or "%"), literal or "%%")
        elif cut:
            piece = (rf"\d{{{FIELD_WIDTHS[directive]}}}", f"%{directive}")
        elif directive == "f" and after_cut:
            piece = (FRACTION_DIGITS, "%f")
        else:
            piece = (".+?", f"%{directive}")  # strptime itself checks the rest
        chunks[-1] = (chunks[-1][0] + piece[0], chunks[-1][1] + piece[1])
        if cut:
            chunks.append(("", ""))
    if len(chunks) == 1:
        return None
    pattern = "".join(f"({chunk_pattern})" for chunk_pattern, _ in chunks)
    # Case-blind, as strptime is for the format's letters ("t" for "T", "pm" for "PM").
    return (re.compile(pattern, re.DOTALL | re.IGNORECASE),
            PART_SEPARATOR.join(chunk_format for _, chunk_format in chunks))


def _strptime(raw: str, time_format: str) -> datetime:
    split = _run_together_fields(time_format)
    if split is None:
        return datetime.strptime(raw, time_format)
    # strptime lets a field take fewer digits, and splits run-together digits as it can:
    # "20240102030405" read with "%Y%m%d%H%M%S%f" would be 03:04:00.5, not an error.
    pattern, separated_format = split
    match = pattern.fullmatch(raw)
    if match is None:
        raise ValueError(f"{raw!r} does not match {time_format!r} digit for digit")
    try:
        return datetime.strptime(PART_SEPARATOR.join(match.groups()), separated_format)
    except ValueError:
        raise ValueError(f"{raw!r} does not match {time_format!r}") from None  # without the cuts


def load_mapping_file(path: str) -> MappingFile:
    """Read and check a YAML or JSON mapping file; MappingFileError names file and fault."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise MappingFileError(f"{path}: cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise MappingFileError(f"{path}: is not UTF-8 text") from None
    return parse_mapping_document(_decode(text, path), path)


def parse_mapping_document(document: object, source: str) -> MappingFile:
    """Check a decoded mapping document; MappingFileError names the source and the fault."""
    try:
        return _parse_document(document)
    except _Fault as fault:
        where = f"{source}: {fault.path}" if fault.path else source
        raise MappingFileError(f"{where}: {fault.message}") from None


def _value(fields: Mapping[str, str], name: str | None) -> str | None:
    return optional(fields, name.lower()) if name else None


def _event_time(mapping: VendorMapping, fields: Mapping[str, str]) -> datetime | None:
    raw = _value(fields, mapping.event_time)
    if raw is None or mapping.event_time is None or mapping.time_format is None:
        return None
    try:
        return parse_event_time(raw, mapping.time_format, mapping.zone)
    except ValueError:
        raise MappingError(mapping.event_time,
                           f"{raw!r} does not match time format {mapping.time_format!r}") from None


# --- decoding -----------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """Load YAML safely, keeping keys as written and refusing a key written twice."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    # Keys stay strings as written: YAML 1.1 would read 8:6 as the number 486 and 'on' as True.
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value",
                                                    key_node.start_mark)
        key = loader.construct_scalar(key_node)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                    key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _decode(text: str, path: str) -> object:
    try:
        if text.lstrip().startswith("{"):
            return _decode_json(text, path)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass.
    except yaml.YAMLError as error:
        reason = _describe_yaml_error(error)
        raise MappingFileError(f"{path}: is not valid YAML: {reason}") from None
    except RecursionError:
        raise MappingFileError(f"{path}: is nested too deeply to be a mapping file") from None


def _decode_json(text: str, path: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_unique_json_object)
    except json.JSONDecodeError as error:
        raise MappingFileError(
            f"{path}: is not valid JSON: {error.msg} at line {error.lineno}") from None
    except _Fault as fault:
        raise MappingFileError(f"{path}: is not valid JSON: {fault.message}") from None


def _unique_json_object(pairs: list[tuple[str, object]]) -> dict:
    mapping: dict = {}
    for key, value in pairs:
        if key in mapping:
            raise _Fault("", f"duplicate key {key!r}")
        mapping[key] = value
    return mapping


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error)
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}" if mark else problem


# --- checking -----------------------------------------------------------------------------

def _parse_document(document: object) -> MappingFile:
    if not isinstance(document, dict) or not document:
        raise _Fault("", "must be a mapping with 'vendors' and/or 'overrides'")
    _check_keys(document, "", allowed=("vendors", "overrides"), needed=())
    vendors = _mapping(document.get("vendors", {}), "vendors")
    overrides = _mapping(document.get("overrides", {}), "overrides")
    return MappingFile(
        vendors={name: _parse_vendor(name, body) for name, body in vendors.items()},
        overrides={name: _parse_override(name, body) for name, body in overrides.items()},
    )


def _parse_vendor(name: object, body: object) -> VendorMapping:
    path = f"vendors.{name}"
    _check_vendor_name(name, path)
    spec = _mapping(body, path)
    _check_keys(spec, path, allowed=VENDOR_KEYS, needed=("parameters", "outcomes"))
    parameters = _parse_parameters(spec["parameters"], f"{path}.parameters")
    time_format = _parse_time_format(spec.get("time_format"), parameters, path)
    zone = _parse_timezone(spec.get("timezone"), time_format, f"{path}.timezone")
    return VendorMapping(
        name=str(name),
        outcomes=_parse_table(spec["outcomes"], f"{path}.outcomes", key_pattern=None),
        default_outcome=_parse_entry(spec.get("default_outcome", "UNKNOWN"),
                                     f"{path}.default_outcome"),
        time_format=time_format,
        zone=zone,
        inbound=_parse_inbound(spec["inbound"], f"{path}.inbound") if "inbound" in spec else None,
        **parameters,
    )


def _check_vendor_name(name: object, path: str) -> None:
    if name in BUILT_IN_VENDORS:
        raise _Fault(path, f"clashes with the built-in vendor {name!r}; "
                           f"change its table under overrides.{name} instead")
    if not isinstance(name, str) or not VENDOR_NAME_PATTERN.match(name):
        raise _Fault(path, "a vendor name must be lower-case letters, digits, '-' or '_'")
    if len(name) > MAX_VENDOR_NAME_LENGTH:
        # Every stored report carries the name: a longer one would fail each request instead.
        raise _Fault(path, f"a vendor name is at most {MAX_VENDOR_NAME_LENGTH} characters")


def _parse_parameters(body: object, path: str) -> dict[str, str]:
    spec = _mapping(body, path)
    _check_keys(spec, path, allowed=PARAMETER_KEYS, needed=("message_id", "status_code"))
    return {key: _text(value, f"{path}.{key}") for key, value in spec.items()}


def _parse_inbound(body: object, path: str) -> InboundFields:
    spec = _mapping(body, path)
    _check_keys(spec, path, allowed=INBOUND_KEYS, needed=INBOUND_KEYS)
    return InboundFields(**{key: _text(value, f"{path}.{key}") for key, value in spec.items()})


def _parse_time_format(value: object, parameters: Mapping[str, str], path: str) -> str | None:
    path = f"{path}.time_format"
    if value is None:
        if "event_time" in parameters:
            raise _Fault(path, "is required when parameters.event_time is set")
        return None
    if "event_time" not in parameters:
        raise _Fault(path, "is set but parameters.event_time is not")
    time_format = _text(value, path)
    if time_format not in EPOCH_UNITS_PER_SECOND:
        _check_strptime_format(time_format, path)
    return time_format


def _parse_timezone(value: object, time_format: str | None, path: str) -> tzinfo:
    if value is None:
        return timezone.utc
    if time_format is None:
        raise _Fault(path, "is set but parameters.event_time is not")
    directives = {directive for directive, _ in FORMAT_PART.findall(time_format)}
    if time_format in EPOCH_UNITS_PER_SECOND or directives & {"z", "Z"}:
        raise _Fault(path, f"does not apply: times in format {time_format!r} carry their own zone")
    return _zone(_text(value, path), path)


def _zone(name: str, path: str) -> ZoneInfo:
    expected = "expected an IANA name such as 'Europe/Stockholm', or 'UTC'"
    if name in MACHINE_ZONES:
        raise _Fault(path, f"{name!r} is this machine's zone, not a named one; {expected}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: a path, or not zone data
        raise _Fault(path, f"unknown time zone {name!r}; {expected}") from None


def _check_strptime_format(time_format: str, path: str) -> None:
    sample = datetime(2001, 2, 3, 4, 5, 6, 7000, tzinfo=timezone.utc)
    expected = "a strptime format (e.g. '%Y-%m-%d %H:%M:%S'), 'epoch' or 'epoch_ms'"
    if "%" not in time_format:
        raise _Fault(path, f"{time_format!r} is not {expected}")
    try:
        _strptime(sample.strftime(time_format), time_format)
    except ValueError as error:
        raise _Fault(path, f"{time_format!r} is not {expected}: {error}") from None
    directives = {directive for directive, _ in FORMAT_PART.findall(time_format)} - {"", "%"}
    if not (directives & {"Y", "y"} and directives & {"m", "b", "B", "j"} and directives & {"d", "j"}):
        # A time without its date would be read as 1900-01-01: outside every SAP window.
        raise _Fault(path, f"{time_format!r} must carry the date: a year, a month and a day")
    if "I" in directives and "p" not in directives:
        raise _Fault(path, f"{time_format!r} has a 12-hour clock (%I) without AM/PM (%p)")


def _parse_override(vendor: object, body: object) -> dict[str, OutcomeRule]:
    path = f"overrides.{vendor}"
    if vendor not in BUILT_IN_VENDORS:
        raise _Fault(path, f"not a built-in vendor; expected one of {', '.join(BUILT_IN_VENDORS)}")
    return _parse_table(body, path, key_pattern=OVERRIDE_KEY_PATTERNS.get(str(vendor)))


def _parse_table(body: object, path: str,
                 key_pattern: re.Pattern | None) -> dict[str, OutcomeRule]:
    table: dict[str, OutcomeRule] = {}
    for raw_key, value in _mapping(body, path).items():
        key = _table_key(raw_key, f"{path}.{raw_key}", key_pattern)
        if key in table:
            raise _Fault(f"{path}.{raw_key}", "listed twice (status values ignore letter case)")
        table[key] = _parse_entry(value, f"{path}.{raw_key}")
    if not table:
        raise _Fault(path, "must list at least one status value")
    return table


def _table_key(raw_key: object, path: str, key_pattern: re.Pattern | None) -> str:
    if isinstance(raw_key, bool) or not isinstance(raw_key, (str, int)):
        raise _Fault(path, "a status value must be text or a number")
    key = str(raw_key).strip().lower()
    if not key:
        raise _Fault(path, "a status value must not be empty")
    if key_pattern is not None and not key_pattern.match(key):
        raise _Fault(path, "is not a status key this vendor's mapper understands")
    if key_pattern is genesys.STATUS_KEY_PATTERN:
        # Read as the Genesys mapper reads codes ("08" is 8), or the key would never apply.
        key = ":".join(part if part == "*" else genesys.read_code(part) for part in key.split(":"))
    return key


def _parse_entry(value: object, path: str) -> OutcomeRule:
    if isinstance(value, dict):
        _check_keys(value, path, allowed=ENTRY_KEYS, needed=("outcome",))
        outcome = _outcome(value["outcome"], f"{path}.outcome")
        error_type = value.get("error_type")
    else:
        outcome, error_type = _outcome(value, path), None
    if outcome is not Outcome.ERROR:
        if error_type is not None:
            raise _Fault(f"{path}.error_type",
                         f"only an ERROR carries an error_type, not {outcome.value}")
        return outcome, None
    if error_type is None:
        raise _Fault(path, "an ERROR needs an error_type: write {outcome: ERROR, error_type: ...}")
    return outcome, _error_type(error_type, f"{path}.error_type")


def _outcome(value: object, path: str) -> Outcome:
    names = ", ".join(outcome.value for outcome in Outcome)
    if not isinstance(value, str) or value.strip().upper() not in Outcome.__members__:
        raise _Fault(path, f"unknown outcome {value!r}; expected one of {names}")
    return Outcome[value.strip().upper()]


def _error_type(value: object, path: str) -> ErrorType:
    names = ", ".join(error_type.value for error_type in ErrorType)
    if not isinstance(value, str) or value.strip().upper() not in ErrorType.__members__:
        raise _Fault(path, f"unknown error_type {value!r}; expected one of {names}")
    return ErrorType[value.strip().upper()]


def _check_keys(spec: dict, path: str, allowed: tuple[str, ...], needed: tuple[str, ...]) -> None:
    prefix = f"{path}." if path else ""
    for key in spec:
        if key not in allowed:
            raise _Fault(f"{prefix}{key}", f"unknown key; expected one of {', '.join(allowed)}")
    for key in needed:
        if key not in spec:
            raise _Fault(path, f"missing required key {key!r}")


def _mapping(value: object, path: str) -> dict:
    if not isinstance(value, dict):
        raise _Fault(path, "must be a mapping")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Fault(path, "must be a non-empty text")
    return value.strip()
