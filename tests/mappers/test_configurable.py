"""Vendors declared in a mapping file map like built-in ones; bad files are refused clearly."""
from __future__ import annotations

import copy
import json
import zoneinfo
from datetime import datetime
from pathlib import Path

import pytest

from mappers import configurable, expertflow, genesys, twilio
from mappers.configurable import MappingFileError
from mappers.report import ErrorType, MappingError, Outcome

RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9)
EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "vendor-mappings.example.yaml"

ACME_YAML = """\
vendors:
  acme:
    parameters:
      message_id: msgId
      status_code: stat
      recipient: msisdn
      status_text: statText
      event_time: doneAt
    time_format: "%Y-%m-%d %H:%M:%S"
    outcomes:
      DELIVRD: DELIVERED
      ENROUTE: ACCEPTED
      UNDELIV: SOFTBOUNCE
      REJECTD: HARDBOUNCE
      "17":
        outcome: ERROR
        error_type: INSUFFICIENT_CREDIT
    inbound:
      message_id: moId
      source: sender
      destination: receiver
      body: text
"""

MINIMAL_VENDOR = {
    "parameters": {"message_id": "id", "status_code": "status"},
    "outcomes": {"1": "DELIVERED"},
}


def write(tmp_path: Path, name: str, text: str) -> str:
    """Write a mapping file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def acme(tmp_path: Path) -> configurable.VendorMapping:
    """Return the acme vendor loaded from a YAML file."""
    return configurable.load_mapping_file(write(tmp_path, "acme.yaml", ACME_YAML)).vendors["acme"]


@pytest.mark.parametrize(
    ("status", "outcome", "error_type"),
    [
        ("DELIVRD", Outcome.DELIVERED, None),
        ("enroute", Outcome.ACCEPTED, None),
        ("UNDELIV", Outcome.SOFTBOUNCE, None),
        ("REJECTD", Outcome.HARDBOUNCE, None),
        ("17", Outcome.ERROR, ErrorType.INSUFFICIENT_CREDIT),
    ],
)
def test_file_adds_a_vendor_whose_statuses_map_to_outcomes(tmp_path, status, outcome, error_type):
    params = {"msgId": "a-1", "stat": status}

    report = configurable.map_delivery_report(acme(tmp_path), params, RECEIVED_AT)

    assert (report.outcome, report.error_type) == (outcome, error_type)
    assert configurable.is_recognised(acme(tmp_path), params)


def test_declared_parameters_fill_the_report(tmp_path):
    params = {"MSGID": "a-2", "Stat": "DELIVRD", "msisdn": "+4915100", "STATTEXT": "delivered ok",
              "doneat": "2024-05-06 06:00:01"}

    report = configurable.map_delivery_report(acme(tmp_path), params, RECEIVED_AT)

    assert report.vendor_message_id == "a-2"
    assert report.recipient == "+4915100"
    assert (report.status_code, report.status_text) == ("DELIVRD", "delivered ok")
    assert report.event_at == datetime(2024, 5, 6, 6, 0, 1)


@pytest.mark.parametrize("msisdn, recipient", [(" 4915100", "+4915100"), ("4915100", "4915100"), ("  ", None)])
def test_a_recipient_whose_plus_arrived_un_encoded_gets_it_back(tmp_path, msisdn, recipient):
    params = {"msgId": "a-4", "stat": "DELIVRD", "msisdn": msisdn}

    assert configurable.map_delivery_report(acme(tmp_path), params, RECEIVED_AT).recipient == recipient


def test_missing_optional_parameters_fall_back(tmp_path):
    report = configurable.map_delivery_report(acme(tmp_path), {"msgId": "a-3", "stat": "DELIVRD"},
                                              RECEIVED_AT)

    assert report.recipient is None
    assert report.status_text == "DELIVRD"
    assert report.event_at == RECEIVED_AT


@pytest.mark.parametrize("status", ["EXPIRED", ""])
def test_unlisted_status_gets_the_default_outcome(tmp_path, status):
    params = {"msgId": "a-4", "stat": status}

    report = configurable.map_delivery_report(acme(tmp_path), params, RECEIVED_AT)

    assert report.outcome is Outcome.UNKNOWN
    assert report.status_code == status
    assert not configurable.is_recognised(acme(tmp_path), params)


@pytest.mark.parametrize("params", [{"id": "1"}, {"id": "1", "status": ""}, {"id": "1", "status": "  "}])
def test_a_report_without_a_status_is_unknown_whatever_the_default(params):
    # default_outcome is for an unlisted status: a report with none must not bar the number.
    vendor = {**MINIMAL_VENDOR, "default_outcome": "HARDBOUNCE"}
    mapping = configurable.parse_mapping_document({"vendors": {"v": vendor}}, "f.yaml").vendors["v"]

    assert configurable.map_delivery_report(mapping, params, RECEIVED_AT).outcome is Outcome.UNKNOWN


def test_default_outcome_can_be_declared():
    vendor = {**MINIMAL_VENDOR, "default_outcome": {"outcome": "ERROR", "error_type": "UNKNOWN"}}
    mapping = configurable.parse_mapping_document({"vendors": {"v": vendor}}, "f.yaml").vendors["v"]

    report = configurable.map_delivery_report(mapping, {"id": "1", "status": "x"}, RECEIVED_AT)

    assert (report.outcome, report.error_type) == (Outcome.ERROR, ErrorType.UNKNOWN)


def test_declared_vendor_without_message_id_is_refused(tmp_path):
    with pytest.raises(MappingError) as raised:
        configurable.map_delivery_report(acme(tmp_path), {"stat": "DELIVRD"}, RECEIVED_AT)

    assert raised.value.field == "msgId"


def test_event_time_not_matching_the_format_is_refused(tmp_path):
    params = {"msgId": "a-5", "stat": "DELIVRD", "doneAt": "06/05/2024"}

    with pytest.raises(MappingError) as raised:
        configurable.map_delivery_report(acme(tmp_path), params, RECEIVED_AT)

    assert raised.value.field == "doneAt"


@pytest.mark.parametrize(
    ("time_format", "raw", "expected"),
    [
        ("epoch", "1715000000", datetime(2024, 5, 6, 12, 53, 20)),
        ("epoch", "1715000000.5", datetime(2024, 5, 6, 12, 53, 20, 500000)),
        ("epoch_ms", "1715000000250", datetime(2024, 5, 6, 12, 53, 20, 250000)),
        ("%Y%m%d%H%M%S%f", "20240506125320123", datetime(2024, 5, 6, 12, 53, 20, 123000)),
        ("%Y-%m-%dT%H:%M:%S%z", "2024-05-06T14:53:20+0200", datetime(2024, 5, 6, 12, 53, 20)),
        # Only a fixed-width field run into a numeric one is cut; the rest is strptime's as ever.
        ("%d%b%Y %H:%M:%S", "06May2024 12:53:20", datetime(2024, 5, 6, 12, 53, 20)),
        ("%Y%m%dT%H%M%S", "20240506t125320", datetime(2024, 5, 6, 12, 53, 20)),
        ("%Y-%m-%d %I%p", "2024-05-06 3PM", datetime(2024, 5, 6, 15)),
        ("%Y%m%d%H%M%S%z", "20240506145320+0200", datetime(2024, 5, 6, 12, 53, 20)),
        # An offset's `+` sent un-encoded in a query string arrives as a space.
        ("%Y-%m-%dT%H:%M:%S%z", "2024-05-06T14:53:20 02:00", datetime(2024, 5, 6, 12, 53, 20)),
        ("%Y%m%d%H%M%S%z", "20240506145320 0200", datetime(2024, 5, 6, 12, 53, 20)),
        ("%Y-%m-%d %H:%M:%S %z", "2024-05-06 14:53:20  0200", datetime(2024, 5, 6, 12, 53, 20)),
    ],
)
def test_event_time_formats_are_read_as_utc(time_format, raw, expected):
    assert configurable.parse_event_time(raw, time_format) == expected


STOCKHOLM = zoneinfo.ZoneInfo("Europe/Stockholm")


@pytest.mark.parametrize(
    ("raw", "zone", "expected"),
    [
        ("20240115120000000", STOCKHOLM, datetime(2024, 1, 15, 11)),  # winter time, CET +01:00
        ("20240715120000000", STOCKHOLM, datetime(2024, 7, 15, 10)),  # summer time, CEST +02:00
        ("20240715120000123", STOCKHOLM, datetime(2024, 7, 15, 10, 0, 0, 123000)),
        # Clocks go forward at 02:00 on 2024-03-31: 02:00-02:59 never happens there, and is read
        # with the winter offset (fold=0), as if the clock had not been put forward yet.
        ("20240331015959999", STOCKHOLM, datetime(2024, 3, 31, 0, 59, 59, 999000)),
        ("20240331023000000", STOCKHOLM, datetime(2024, 3, 31, 1, 30)),
        ("20240331030000000", STOCKHOLM, datetime(2024, 3, 31, 1)),
        # Clocks go back at 03:00 on 2024-10-27: 02:00-02:59 happens twice, and is read as the first,
        # summer-time one (fold=0).
        ("20241027015959999", STOCKHOLM, datetime(2024, 10, 26, 23, 59, 59, 999000)),
        ("20241027023000000", STOCKHOLM, datetime(2024, 10, 27, 0, 30)),
        ("20241027030000000", STOCKHOLM, datetime(2024, 10, 27, 2)),
        ("20240715120000123", zoneinfo.ZoneInfo("UTC"), datetime(2024, 7, 15, 12, 0, 0, 123000)),
        ("20240715120000123", None, datetime(2024, 7, 15, 12, 0, 0, 123000)),  # the default: UTC
    ],
)
def test_event_time_without_an_offset_is_read_in_the_vendor_zone(raw, zone, expected):
    zone_argument = {"zone": zone} if zone else {}
    assert configurable.parse_event_time(raw, "%Y%m%d%H%M%S%f", **zone_argument) == expected


def test_a_time_before_year_1_in_utc_is_a_value_error():
    with pytest.raises(ValueError):
        configurable.parse_event_time("00010101003000000", "%Y%m%d%H%M%S%f", STOCKHOLM)


@pytest.mark.parametrize(("declared", "event_at"), [({"timezone": "Europe/Stockholm"}, datetime(2024, 7, 15, 10)),
                                                    ({}, datetime(2024, 7, 15, 12))])
def test_declared_timezone_applies_to_the_reports_event_time(declared, event_at):
    vendor = {**MINIMAL_VENDOR, "parameters": {**MINIMAL_VENDOR["parameters"], "event_time": "at"},
              "time_format": "%Y%m%d%H%M%S%f", **declared}
    mapping = configurable.parse_mapping_document({"vendors": {"acme": vendor}}, "tz.yaml").vendors["acme"]
    params = {"id": "1", "status": "1", "at": "20240715120000000"}

    assert configurable.map_delivery_report(mapping, params, RECEIVED_AT).event_at == event_at


def test_zones_load_without_system_zone_data():
    import tzdata  # noqa: F401  (requirements.txt: Cloud Foundry's stack may have no /usr/share/zoneinfo)
    zoneinfo.reset_tzpath(to=[])
    try:
        zone = zoneinfo.ZoneInfo.no_cache("Europe/Stockholm")
    finally:
        zoneinfo.reset_tzpath()

    assert datetime(2024, 7, 15, 12, tzinfo=zone).utcoffset().total_seconds() == 7200


def test_inbound_message_uses_declared_fields(tmp_path):
    params = {"MOID": "in-1", "sender": "+4915100", "Receiver": "12345", "text": " hi "}

    message = configurable.map_inbound_message(acme(tmp_path), params, RECEIVED_AT)

    assert message.vendor_message_id == "in-1"
    assert (message.source, message.destination, message.body) == ("+4915100", "12345", " hi ")
    assert message.received_at == RECEIVED_AT


@pytest.mark.parametrize(("missing", "field"), [("moId", "moId"), ("sender", "sender")])
def test_inbound_message_without_a_declared_field_is_refused(tmp_path, missing, field):
    params = {"moId": "in-2", "sender": "+1", "receiver": "2", "text": "x"}
    del params[missing]

    with pytest.raises(MappingError) as raised:
        configurable.map_inbound_message(acme(tmp_path), params, RECEIVED_AT)

    assert raised.value.field == field


def test_inbound_message_for_vendor_without_inbound_fields_is_refused():
    loaded = configurable.parse_mapping_document({"vendors": {"v": MINIMAL_VENDOR}}, "f.yaml")
    mapping = loaded.vendors["v"]

    with pytest.raises(MappingError) as raised:
        configurable.map_inbound_message(mapping, {"id": "1"}, RECEIVED_AT)

    assert raised.value.field == "inbound"


def test_file_overrides_built_in_codes(tmp_path):
    path = write(tmp_path, "overrides.yaml", (
        "overrides:\n"
        "  genesys:\n"
        "    8:1: SOFTBOUNCE\n"
        "    '*:2': {outcome: ERROR, error_type: UNKNOWN}\n"
        "  twilio:\n"
        "    undelivered:30003: HARDBOUNCE\n"
    ))
    overrides = configurable.load_mapping_file(path).overrides

    rejected = {"type": "receipt", "message_id": "g", "message_state": "8", "result_code": "1"}
    auth = {**rejected, "result_code": "2"}
    unreachable = {"MessageSid": "SM", "MessageStatus": "undelivered", "ErrorCode": "30003"}

    assert genesys.map_delivery_report(rejected, RECEIVED_AT, overrides["genesys"]).outcome \
        is Outcome.SOFTBOUNCE
    assert genesys.map_delivery_report(auth, RECEIVED_AT, overrides["genesys"]).error_type \
        is ErrorType.UNKNOWN
    assert twilio.map_delivery_report(unreachable, RECEIVED_AT, overrides["twilio"]).outcome \
        is Outcome.HARDBOUNCE


def test_genesys_override_keys_are_read_as_the_mapper_reads_codes(tmp_path):
    # Past Python's 4,300-digit limit for int(), too: a code that long is kept as sent, as the
    # mapper keeps it (no receipt can carry it: its status code would be too long to store).
    long_code = f"{'0' * 5000}7"
    table = {"08:01": "SOFTBOUNCE", "*:098": "HARDBOUNCE", f"8:{long_code}": "ACCEPTED"}
    path = write(tmp_path, "zeros.json", json.dumps({"overrides": {"genesys": table}}))
    overrides = configurable.load_mapping_file(path).overrides["genesys"]
    rejected = {"type": "receipt", "message_id": "g", "message_state": "8", "result_code": "1"}

    assert set(overrides) == {"8:1", "*:98", f"8:{long_code}"}
    assert genesys.map_delivery_report(rejected, RECEIVED_AT, overrides).outcome is Outcome.SOFTBOUNCE


def test_json_file_is_accepted(tmp_path):
    document = {"vendors": {"acme-json": MINIMAL_VENDOR},
                "overrides": {"expertflow": {"undelivered": "HARDBOUNCE"},
                              "sapdi": {"0x4503": "SOFTBOUNCE"}}}
    path = write(tmp_path, "mappings.json", json.dumps(document, indent="\t"))

    loaded = configurable.load_mapping_file(path)

    assert loaded.vendors["acme-json"].outcomes == {"1": (Outcome.DELIVERED, None)}
    assert loaded.overrides == {"expertflow": {"undelivered": (Outcome.HARDBOUNCE, None)},
                                "sapdi": {"0x4503": (Outcome.SOFTBOUNCE, None)}}


def test_expertflow_provider_code_keys_are_accepted_and_read_as_the_mapper_reads_them(tmp_path):
    path = write(tmp_path, "m.yaml", "overrides:\n  expertflow:\n    'FAILED:21211': HARDBOUNCE\n"
                                     "    '*:ESME_RINVDSTADR': HARDBOUNCE\n")

    overrides = configurable.load_mapping_file(path).overrides["expertflow"]

    params = {"MessageSid": "ef-1", "MessageStatus": "failed", "ProviderStatusCode": "21211"}
    assert expertflow.map_delivery_report(params, RECEIVED_AT, overrides).outcome is Outcome.HARDBOUNCE
    assert set(overrides) == {"failed:21211", "*:esme_rinvdstadr"}


def test_example_file_loads_and_maps_mymsp():
    loaded = configurable.load_mapping_file(str(EXAMPLE_FILE))
    params = {"messageId": "m-1", "status": "1100", "statusTime": "20240506125320123"}

    report = configurable.map_delivery_report(loaded.vendors["mymsp"], params, RECEIVED_AT)

    # myMSP's "completed" is not a delivery: "even if not all recipients have received the message".
    assert (report.outcome, report.event_at) == (Outcome.ACCEPTED,
                                                 datetime(2024, 5, 6, 12, 53, 20, 123000))
    assert set(loaded.overrides) == {"genesys", "twilio"}


DELETE = object()


def broken(path: str, value: object) -> dict:
    """Return a valid one-vendor document with the value at a dotted path replaced."""
    document = {"vendors": {"acme": copy.deepcopy(MINIMAL_VENDOR)}}
    *parents, last = path.split(".")
    node = document
    for name in parents:
        node = node[name]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return document


def timed(time_format: str, zone: object) -> dict:
    """Return a valid one-vendor document with an event time in the format, and the timezone key."""
    document = broken("vendors.acme.parameters.event_time", "at")
    document["vendors"]["acme"].update(time_format=time_format, timezone=zone)
    return document


@pytest.mark.parametrize(
    ("document", "fault"),
    [
        (None, "bad.yaml: must be a mapping"),
        ([], "bad.yaml: must be a mapping"),
        ({"vendor": {}}, "bad.yaml: vendor: unknown key"),
        ({"vendors": []}, "bad.yaml: vendors: must be a mapping"),
        ({"vendors": {"twilio": MINIMAL_VENDOR}},
         "bad.yaml: vendors.twilio: clashes with the built-in vendor 'twilio'"),
        ({"vendors": {"sapdi": MINIMAL_VENDOR}},
         "bad.yaml: vendors.sapdi: clashes with the built-in vendor 'sapdi'"),
        ({"vendors": {"My MSP": MINIMAL_VENDOR}}, "bad.yaml: vendors.My MSP: a vendor name"),
        ({"vendors": {"v" * 41: MINIMAL_VENDOR}}, f"bad.yaml: vendors.{'v' * 41}: a vendor name is at most 40"),
        (broken("vendors.acme.outcomes.1", "BLAH"),
         "bad.yaml: vendors.acme.outcomes.1: unknown outcome 'BLAH'"),
        (broken("vendors.acme.outcomes.2", "ERROR"),
         "bad.yaml: vendors.acme.outcomes.2: an ERROR needs an error_type"),
        (broken("vendors.acme.outcomes.2", {"outcome": "ERROR", "error_type": "BROKE"}),
         "bad.yaml: vendors.acme.outcomes.2.error_type: unknown error_type 'BROKE'"),
        (broken("vendors.acme.outcomes.2", {"outcome": "DELIVERED", "error_type": "UNKNOWN"}),
         "bad.yaml: vendors.acme.outcomes.2.error_type: only an ERROR carries an error_type"),
        (broken("vendors.acme.outcomes.2", {"outcome": "ERROR", "errortype": "UNKNOWN"}),
         "bad.yaml: vendors.acme.outcomes.2.errortype: unknown key"),
        (broken("vendors.acme.outcomes", {}),
         "bad.yaml: vendors.acme.outcomes: must list at least one status value"),
        (broken("vendors.acme.outcomes", {"a": "DELIVERED", "A": "ACCEPTED"}),
         "bad.yaml: vendors.acme.outcomes.A: listed twice"),
        (broken("vendors.acme.outcomes", {True: "DELIVERED"}),
         "bad.yaml: vendors.acme.outcomes.True: a status value must be text or a number"),
        (broken("vendors.acme.outcomes", DELETE),
         "bad.yaml: vendors.acme: missing required key 'outcomes'"),
        (broken("vendors.acme.parameters.message_id", DELETE),
         "bad.yaml: vendors.acme.parameters: missing required key 'message_id'"),
        (broken("vendors.acme.parameters.status_code", ""),
         "bad.yaml: vendors.acme.parameters.status_code: must be a non-empty text"),
        (broken("vendors.acme.parameters.msisdn", "to"),
         "bad.yaml: vendors.acme.parameters.msisdn: unknown key"),
        (broken("vendors.acme.colour", "blue"), "bad.yaml: vendors.acme.colour: unknown key"),
        (broken("vendors.acme.parameters.event_time", "at"),
         "bad.yaml: vendors.acme.time_format: is required when parameters.event_time is set"),
        (broken("vendors.acme.time_format", "%Y"),
         "bad.yaml: vendors.acme.time_format: is set but parameters.event_time is not"),
        (broken("vendors.acme.timezone", "Europe/Stockholm"),
         "bad.yaml: vendors.acme.timezone: is set but parameters.event_time is not"),
        (timed("epoch_ms", "Europe/Stockholm"),
         "bad.yaml: vendors.acme.timezone: does not apply: times in format 'epoch_ms' carry their own zone"),
        (timed("%Y-%m-%dT%H:%M:%S%z", "UTC"), "bad.yaml: vendors.acme.timezone: does not apply"),
        (timed("%Y-%m-%d %H:%M:%S %Z", "UTC"), "bad.yaml: vendors.acme.timezone: does not apply"),
        (timed("%Y%m%d%H%M%S", ""), "bad.yaml: vendors.acme.timezone: must be a non-empty text"),
        (timed("%Y%m%d%H%M%S", 1), "bad.yaml: vendors.acme.timezone: must be a non-empty text"),
        (timed("%Y%m%d%H%M%S", "localtime"),
         "bad.yaml: vendors.acme.timezone: 'localtime' is this machine's zone, not a named one"),
        (broken("vendors.acme.default_outcome", "MAYBE"),
         "bad.yaml: vendors.acme.default_outcome: unknown outcome 'MAYBE'"),
        (broken("vendors.acme.inbound", {"message_id": "id", "source": "from", "body": "b"}),
         "bad.yaml: vendors.acme.inbound: missing required key 'destination'"),
        ({"overrides": {"mymsp": {"1": "DELIVERED"}}},
         "bad.yaml: overrides.mymsp: not a built-in vendor"),
        ({"overrides": {"genesys": {"delivered": "DELIVERED"}}},
         "bad.yaml: overrides.genesys.delivered: is not a status key this vendor's mapper"),
        ({"overrides": {"twilio": {"undelivered:abc": "DELIVERED"}}},
         "bad.yaml: overrides.twilio.undelivered:abc: is not a status key"),
        ({"overrides": {"sapdi": {"4503": "SOFTBOUNCE"}}},
         "bad.yaml: overrides.sapdi.4503: is not a status key"),
        ({"overrides": {"expertflow": {"failed": "GONE"}}},
         "bad.yaml: overrides.expertflow.failed: unknown outcome 'GONE'"),
    ],
)
def test_malformed_document_names_source_and_fault(document, fault):
    with pytest.raises(MappingFileError) as raised:
        configurable.parse_mapping_document(document, "bad.yaml")

    assert str(raised.value).startswith(fault)


@pytest.mark.parametrize(
    ("time_format", "raw"),
    [("%Y-%m-%d", "2024-13-01"), ("epoch", "soon"), ("epoch", "1e300"),
     ("%Y-%m-%dT%H:%M:%S%z", "0001-01-01T00:00:00+0100"),
     # Fields run together need all their digits: strptime would read these shifted.
     ("%Y%m%d%H%M%S%f", "20240102030405"), ("%Y%m%d%H%M%S%f", "2024010203040"),
     ("%Y%m%d%H%M%S", "2024012030405"),
     # 16 or 18 digits of yyyyMMddHHmmssSSS: a digit missing or extra, wherever it is.
     ("%Y%m%d%H%M%S%f", "2024010203040512"), ("%Y%m%d%H%M%S%f", "202401020304051234")],
)
def test_event_time_parse_errors_are_value_errors(time_format, raw):
    with pytest.raises(ValueError) as raised:
        configurable.parse_event_time(raw, time_format)

    assert "\x1f" not in str(raised.value)


@pytest.mark.parametrize("time_format", ["YYYYMMDD", "%Y-%Q", "%H%M%S", "%m%d %H:%M", "x%%y",
                                         "%Y-%m-%d %I:%M:%S"])
def test_bad_time_format_is_refused(time_format):
    document = broken("vendors.acme.parameters.event_time", "at")
    document["vendors"]["acme"]["time_format"] = time_format

    with pytest.raises(MappingFileError) as raised:
        configurable.parse_mapping_document(document, "bad.yaml")

    assert str(raised.value).startswith(f"bad.yaml: vendors.acme.time_format: {time_format!r}")


@pytest.mark.parametrize(
    ("name", "text", "fault"),
    [
        ("broken.yaml", "vendors: [unclosed\n", "is not valid YAML"),
        ("twice.yaml", "vendors:\n  a: {}\n  a: {}\n", "is not valid YAML: duplicate key 'a'"),
        ("broken.json", '{"vendors": {"a": }', "is not valid JSON"),
        ("twice.json", '{"overrides": {}, "overrides": {}}',
         "is not valid JSON: duplicate key 'overrides'"),
        ("empty.yaml", "", "must be a mapping"),
        ("deep.yaml", "vendors: " + "[" * 2000, "nested too deeply"),
        ("deep.json", '{"vendors": ' + "[" * 100_000, "nested too deeply"),
        ("fault.yaml", "vendors:\n  mymsp:\n    parameters: {message_id: id, status_code: s}\n"
                       "    outcomes:\n      FOO: BLAH\n",
         "vendors.mymsp.outcomes.FOO: unknown outcome 'BLAH'"),
    ],
)
def test_malformed_file_error_names_file_and_fault(tmp_path, name, text, fault):
    path = write(tmp_path, name, text)

    with pytest.raises(MappingFileError) as raised:
        configurable.load_mapping_file(path)

    assert str(raised.value).startswith(f"{path}: ")
    assert fault in str(raised.value)


@pytest.mark.parametrize("zone", ["Europe/Stockhom", "europe/stockholm", "Europe", "CEST", "../../etc/passwd",
                                  "/etc/localtime", "zone.tab"])
def test_unknown_timezone_is_refused_in_one_line_naming_file_vendor_and_key(tmp_path, zone):
    path = write(tmp_path, "zones.yaml", "vendors:\n  mymsp:\n    parameters: {message_id: id, status_code: s, "
                                         f"event_time: t}}\n    time_format: '%Y%m%d%H%M%S%f'\n"
                                         f"    timezone: '{zone}'\n    outcomes: {{'1': DELIVERED}}\n")

    with pytest.raises(MappingFileError) as raised:
        configurable.load_mapping_file(path)

    assert str(raised.value) == (f"{path}: vendors.mymsp.timezone: unknown time zone {zone!r}; "
                                 "expected an IANA name such as 'Europe/Stockholm', or 'UTC'")


def test_missing_file_error_names_file(tmp_path):
    path = str(tmp_path / "absent.yaml")

    with pytest.raises(MappingFileError) as raised:
        configurable.load_mapping_file(path)

    assert str(raised.value).startswith(f"{path}: cannot be read")


def test_yaml_keys_are_read_as_written(tmp_path):
    path = write(tmp_path, "keys.yaml", "overrides:\n  genesys:\n    8:6: HARDBOUNCE\n"
                                        "  expertflow:\n    on: DELIVERED\n")

    overrides = configurable.load_mapping_file(path).overrides

    assert overrides == {"genesys": {"8:6": (Outcome.HARDBOUNCE, None)},
                         "expertflow": {"on": (Outcome.DELIVERED, None)}}
