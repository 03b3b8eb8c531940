"""The SAP Digital Interconnect mapper, rule by rule."""
from __future__ import annotations

from datetime import datetime

import pytest

from mappers import sapdi
from mappers.report import MappingError, Outcome

RECEIVED = datetime(2026, 1, 1, 0, 0, 0)
BASE = {"orderID": "1636010434", "time": "155423", "date": "14032018", "msisdn": "+49123456789",
        "status": "'0x4503 Message 1 of the order 1636010434 at destination of +49123456789 is out of coverage'"}


def report(**changes):
    params = {**BASE, **changes}
    return sapdi.map_delivery_report({k: v for k, v in params.items() if v is not None}, RECEIVED)


@pytest.mark.parametrize("date, time, expected", [
    ("14032018", "155423", datetime(2018, 3, 14, 15, 54, 23)),
    ("29022024", "000000", datetime(2024, 2, 29, 0, 0, 0)),
    ("31122025", "235959", datetime(2025, 12, 31, 23, 59, 59)),
])
def test_date_and_time_become_the_event_timestamp(date, time, expected):
    assert report(date=date, time=time).event_at == expected


@pytest.mark.parametrize("status, code, text", [
    ("'0x4503 Message 1 is out of coverage'", "0x4503", "Message 1 is out of coverage"),
    ("0x4503 Message 1 is out of coverage", "0x4503", "Message 1 is out of coverage"),
    ("  '0xDBF3   Temporary failure '  ", "0xDBF3", "Temporary failure"),
    ('"0x0a1B quoted twice"', "0x0a1B", "quoted twice"),
    ("0x4503 'inner quotes'", "0x4503", "inner quotes"),
    ("'Message delivered'", "", "Message delivered"),
    ("0x45031 five hex digits is not a code", "", "0x45031 five hex digits is not a code"),
])
def test_status_splits_into_code_and_text(status, code, text):
    mapped = report(status=status)
    assert (mapped.status_code, mapped.status_text) == (code, text)


@pytest.mark.parametrize("status, outcome, bounce_type", [
    ("'0xDBF3 absent subscriber'", Outcome.SOFTBOUNCE, "Temporary"),
    ("'0xdbf3 absent subscriber'", Outcome.SOFTBOUNCE, "Temporary"),
    ("'0x4503 out of coverage'", Outcome.HARDBOUNCE, "Permanent"),
    ("'0x0001 anything else'", Outcome.HARDBOUNCE, "Permanent"),
    ("'Message delivered to handset'", Outcome.DELIVERED, None),
])
def test_codes_map_to_outcome_and_bounce_type(status, outcome, bounce_type):
    mapped = report(status=status)
    assert (mapped.outcome, mapped.bounce_type) == (outcome, bounce_type)


@pytest.mark.parametrize("params", [
    {"orderid": "1", "TIME": "101010", "Date": "01012020", "MSISDN": "+4912345", "STATUS": "ok"},
    {"OrderId": "1", "time": "101010", "date": "01012020", "msisdn": "+4912345", "status": "ok"},
])
def test_parameter_names_in_any_letter_case(params):
    assert sapdi.map_delivery_report(params, RECEIVED).vendor_message_id == "1"


@pytest.mark.parametrize("msisdn, expected", [
    (" 49123456789", "+49123456789"),   # a raw '+' decoded as a space
    ("+49123456789", "+49123456789"),
    ("49123456789", "49123456789"),
])
def test_unencoded_plus_in_phone_number_is_restored(msisdn, expected):
    assert report(msisdn=msisdn).recipient == expected


@pytest.mark.parametrize("msisdn, status, text", [
    # The blog's own request: the `+` of the number arrived un-encoded in the status text too.
    (" 49123456789", "'0x4503 Message 1 at destination of  49123456789 is out of coverage'",
     "Message 1 at destination of +49123456789 is out of coverage"),
    (" 49123456789", "' 49123456789 is out of coverage'", "+49123456789 is out of coverage"),
    (" 49123456789", "0x4503  49123456789", "+49123456789"),
    (" 49123456789", " 49123456789 unreachable", "+49123456789 unreachable"),
    # Only the number itself, only where a `+` can have stood, and only when msisdn lost its `+` too.
    (" 49123456789", "'0x4503 at destination of 49123456789'", "at destination of 49123456789"),
    (" 49123456789", "'0x4503 order  491234567890 failed'", "order  491234567890 failed"),
    ("+49123456789", "'0x4503 at destination of  49123456789'", "at destination of  49123456789"),
    ("49123456789", "'0x4503 at destination of  49123456789'", "at destination of  49123456789"),
])
def test_unencoded_plus_of_the_number_in_the_status_text_is_restored(msisdn, status, text):
    assert report(msisdn=msisdn, status=status).status_text == text


@pytest.mark.parametrize("changes, field", [
    ({"orderID": ""}, "orderID"),
    ({"orderID": None}, "orderID"),
    ({"date": "31022018"}, "date"),
    ({"date": "2018-03-14"}, "date"),
    ({"time": "256000"}, "time"),
    ({"time": "1554"}, "time"),
    ({"msisdn": ""}, "msisdn"),
    ({"msisdn": "call me"}, "msisdn"),
    ({"status": "  "}, "status"),
])
def test_missing_or_malformed_parameters_name_the_field(changes, field):
    with pytest.raises(MappingError) as error:
        report(**changes)
    assert error.value.field == field


def test_override_table_changes_a_code():
    params = {**BASE, "status": "'0x4503 out of coverage'"}
    mapped = sapdi.map_delivery_report(params, RECEIVED, overrides={"0x4503": Outcome.SOFTBOUNCE})
    assert mapped.bounce_type == "Temporary"
