"""Every vendor adapter names a fault after the parameter the vendor sent, not a normalised field."""
from __future__ import annotations

from datetime import datetime

import pytest
import yaml

from mappers.configurable import parse_mapping_document
from mappers.registry import build_registry
from mappers.report import MAX_STATUS_CODE_LENGTH, MappingError

LONG = "9" * 5000
NOW = datetime(2026, 12, 1, 9)
GENESYS_MO = {"type": "MO", "message_id": "mo-1", "phone_number": "4915112345678", "shortcode": "12345",
              "message": "hi"}
TWILIO_MO = {"MessageSid": "SM1", "From": "+4915112345678", "To": "+15550001111", "Body": "hi"}
EXPERTFLOW_MO = {"SmsSid": "SM1", "From": "+4915112345678", "To": "+15550001111", "Body": "hi"}
SAPDI = {"orderID": "1", "date": "01122026", "time": "090000", "msisdn": "+4915112345678", "status": "delivered"}
ACME_MAPPING = """vendors:
  acme:
    parameters: {message_id: msgid, status_code: stat, recipient: dest_addr}
    outcomes: {"1": DELIVERED}
    inbound: {message_id: msgid, source: sender_msisdn, destination: short_code, body: sms_text}
"""
ACME_MO = {"msgid": "a-1", "sender_msisdn": "4915112345678", "short_code": "12345", "sms_text": "hi"}


@pytest.fixture(scope="module")
def registry():
    """Return the built-in adapters and a mapping-file vendor."""
    return build_registry(parse_mapping_document(yaml.safe_load(ACME_MAPPING), "acme.yaml"))


def fault_of(registry, vendor: str, kind: str, params: dict, too_long: str) -> MappingError:
    """Return the fault of mapping the request with one parameter far too long to store."""
    adapter = registry[vendor]
    mapper = adapter.map_report if kind == "report" else adapter.map_inbound
    with pytest.raises(MappingError) as raised:
        mapper({**params, too_long: LONG}, NOW)
    return raised.value


@pytest.mark.parametrize("vendor, kind, params, too_long", [
    ("genesys", "report", {"type": "receipt", "message_id": "x", "message_state": "2"}, "message_id"),
    ("genesys", "inbound", GENESYS_MO, "message_id"),
    ("genesys", "inbound", GENESYS_MO, "phone_number"),
    ("genesys", "inbound", GENESYS_MO, "shortcode"),
    ("twilio", "report", {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+4915112345678"}, "To"),
    ("twilio", "inbound", TWILIO_MO, "From"),
    ("expertflow", "inbound", EXPERTFLOW_MO, "To"),
    ("sapdi", "report", SAPDI, "orderID"),
    ("acme", "report", {"msgid": "a-1", "stat": "1", "dest_addr": "4915112345678"}, "dest_addr"),
    ("acme", "inbound", ACME_MO, "sender_msisdn"),
    ("acme", "inbound", ACME_MO, "msgid"),
])
def test_a_value_too_long_to_store_is_named_as_the_vendor_sent_it(registry, vendor, kind, params, too_long):
    fault = fault_of(registry, vendor, kind, params, too_long)

    assert fault.field == too_long and "at most" in fault.fault


def test_a_declared_vendors_status_too_long_to_store_is_cut_as_the_built_in_vendors_are(registry):
    # Refused, the report would be resent for ever and never stored.
    report = registry["acme"].map_report({"msgid": "a-1", "stat": "s" * 500}, NOW)

    assert (report.status_code, report.status_text) == ("s" * MAX_STATUS_CODE_LENGTH, "s" * 500)


TWILIO_REPORT = {"MessageSid": "SM1", "MessageStatus": "delivered"}


@pytest.mark.parametrize("vendor, kind, params, too_long", [
    # An id read from one of two parameters is named as the one it was read from: one the vendor sent.
    ("twilio", "report", TWILIO_REPORT, "MessageSid"),
    ("twilio", "report", {"SmsSid": "SM1", "MessageStatus": "delivered"}, "SmsSid"),
    ("twilio", "inbound", {**TWILIO_MO, "SmsSid": "SM1"}, "MessageSid"),
    ("expertflow", "inbound", EXPERTFLOW_MO, "SmsSid"),
    ("expertflow", "inbound", {**EXPERTFLOW_MO, "SmsSid": "", "MessageSid": "SM1"}, "MessageSid"),
])
def test_an_id_read_from_one_of_two_parameters_is_named_as_the_one_read(registry, vendor, kind, params, too_long):
    fault = fault_of(registry, vendor, kind, params, too_long)

    assert fault.field == too_long and "at most" in fault.fault
