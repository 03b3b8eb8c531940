"""Twilio-style status callbacks and inbound messages map to the normalised vocabulary."""
from __future__ import annotations

from datetime import datetime

import pytest

from mappers import twilio
from mappers.report import ErrorType, MappingError, Outcome

RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9)


def callback(status: str, error_code: str | None = None) -> dict[str, str]:
    """Return a status callback form as a Twilio-style gateway posts it."""
    params = {"MessageSid": "SM1", "MessageStatus": status, "To": "+4915112345678",
              "From": "+4930123456", "AccountSid": "AC1"}
    if error_code is not None:
        params["ErrorCode"] = error_code
    return params


@pytest.mark.parametrize(
    ("status", "error_code", "outcome"),
    [
        ("delivered", None, Outcome.DELIVERED),
        ("queued", None, Outcome.ACCEPTED),
        ("accepted", None, Outcome.ACCEPTED),
        ("scheduled", None, Outcome.ACCEPTED),
        ("sending", None, Outcome.ACCEPTED),
        ("sent", None, Outcome.ACCEPTED),
        ("undelivered", "30003", Outcome.SOFTBOUNCE),
        ("undelivered", "30005", Outcome.HARDBOUNCE),
        ("undelivered", "30006", Outcome.HARDBOUNCE),
        ("undelivered", "21211", Outcome.HARDBOUNCE),
        ("undelivered", "21610", Outcome.HARDBOUNCE),
        ("undelivered", "21614", Outcome.HARDBOUNCE),
        ("failed", "30005", Outcome.HARDBOUNCE),
        ("failed", "21610", Outcome.HARDBOUNCE),
        ("undelivered", "30008", Outcome.SOFTBOUNCE),
        ("undelivered", None, Outcome.SOFTBOUNCE),
        ("undelivered", "", Outcome.SOFTBOUNCE),
        ("delivered", "0", Outcome.DELIVERED),
    ],
)
def test_status_and_error_code_map_to_outcome(status, error_code, outcome):
    report = twilio.map_delivery_report(callback(status, error_code), RECEIVED_AT)

    assert report.outcome is outcome
    assert report.error_type is None
    assert twilio.is_recognised(callback(status, error_code))


@pytest.mark.parametrize("error_code", [None, "30001", "30002", "30003", "30007"])
def test_failed_without_a_code_that_blames_the_number_is_the_senders_error(error_code):
    report = twilio.map_delivery_report(callback("failed", error_code), RECEIVED_AT)

    assert (report.outcome, report.error_type) == (Outcome.ERROR, ErrorType.UNKNOWN)
    assert report.bounce_type == "Temporary"


@pytest.mark.parametrize(
    ("error_code", "status_code"),
    [("30003", "30003"), (None, "undelivered"), ("0", "undelivered"),
     # One too long to store gives way to the status, so that the callback is still stored.
     ("3" * 41, "undelivered")],
)
def test_status_code_is_error_code_else_status(error_code, status_code):
    report = twilio.map_delivery_report(callback("undelivered", error_code), RECEIVED_AT)

    assert (report.status_code, report.status_text) == (status_code, "undelivered")


def test_callback_carries_id_recipient_and_received_time():
    report = twilio.map_delivery_report(callback("delivered"), RECEIVED_AT)

    assert report.vendor_message_id == "SM1"
    assert report.recipient == "+4915112345678"
    assert report.event_at == RECEIVED_AT


@pytest.mark.parametrize("status", ["canceled", "teleported", ""])
def test_unknown_status_maps_to_unknown_and_keeps_raw_value(status):
    params = callback(status)

    report = twilio.map_delivery_report(params, RECEIVED_AT)

    assert report.outcome is Outcome.UNKNOWN
    assert report.status_text == status
    assert not twilio.is_recognised(params)


def test_names_and_status_values_match_ignoring_letter_case():
    params = {"messagesid": "SM7", "MESSAGESTATUS": "Undelivered", "errorcode": "30005",
              "TO": "+100"}

    report = twilio.map_delivery_report(params, RECEIVED_AT)

    assert (report.vendor_message_id, report.recipient) == ("SM7", "+100")
    assert report.outcome is Outcome.HARDBOUNCE
    assert report.status_text == "Undelivered"


def test_older_gateways_sms_names_are_understood():
    params = {"SmsSid": "SM8", "SmsStatus": "delivered"}

    report = twilio.map_delivery_report(params, RECEIVED_AT)

    assert (report.vendor_message_id, report.outcome) == ("SM8", Outcome.DELIVERED)


@pytest.mark.parametrize("message_sid", [None, "", "  "])
def test_callback_without_message_sid_is_refused(message_sid):
    params = callback("delivered")
    del params["MessageSid"]
    if message_sid is not None:
        params["MessageSid"] = message_sid

    with pytest.raises(MappingError) as raised:
        twilio.map_delivery_report(params, RECEIVED_AT)

    assert raised.value.field == "MessageSid"


@pytest.mark.parametrize(
    ("overrides", "status", "error_code", "outcome", "error_type"),
    [
        ({"undelivered:30003": Outcome.HARDBOUNCE}, "undelivered", "30003",
         Outcome.HARDBOUNCE, None),
        ({"failed": Outcome.SOFTBOUNCE}, "failed", None, Outcome.SOFTBOUNCE, None),
        ({"*:30005": Outcome.SOFTBOUNCE}, "undelivered", "30005", Outcome.SOFTBOUNCE, None),
        ({"Undelivered:30007": Outcome.HARDBOUNCE}, "undelivered", "30007",
         Outcome.HARDBOUNCE, None),
        ({"failed:30002": (Outcome.ERROR, ErrorType.AUTHENTICATION)}, "failed", "30002",
         Outcome.ERROR, ErrorType.AUTHENTICATION),
        ({"canceled": Outcome.HARDBOUNCE}, "canceled", None, Outcome.HARDBOUNCE, None),
        ({"*:30008": (Outcome.SOFTBOUNCE, ErrorType.UNKNOWN)}, "undelivered", "30008",
         Outcome.SOFTBOUNCE, None),
    ],
)
def test_overrides_take_precedence_over_built_in_table(overrides, status, error_code, outcome,
                                                         error_type):
    params = callback(status, error_code)

    report = twilio.map_delivery_report(params, RECEIVED_AT, overrides)

    assert (report.outcome, report.error_type) == (outcome, error_type)
    assert twilio.is_recognised(params, overrides)


def test_override_leaves_other_codes_of_the_same_status_alone():
    overrides = {"undelivered:30003": Outcome.HARDBOUNCE}

    report = twilio.map_delivery_report(callback("undelivered", "30008"), RECEIVED_AT, overrides)

    assert report.outcome is Outcome.SOFTBOUNCE


def test_inbound_message_maps_sid_numbers_and_body():
    params = {"MessageSid": "SM9", "From": "+4915112345678", "To": "+4930123456",
              "Body": "STOP ", "NumMedia": "0"}

    message = twilio.map_inbound_message(params, RECEIVED_AT)

    assert message.vendor_message_id == "SM9"
    assert (message.source, message.destination) == ("+4915112345678", "+4930123456")
    assert message.body == "STOP "
    assert message.received_at == RECEIVED_AT


def test_numbers_whose_plus_arrived_un_encoded_get_it_back():
    report = twilio.map_delivery_report({**callback("failed"), "To": " 4917012345"}, RECEIVED_AT)
    message = twilio.map_inbound_message({"MessageSid": "SM9", "From": " 4915112345678", "To": " 4930123456"},
                                         RECEIVED_AT)

    assert report.recipient == "+4917012345"
    assert (message.source, message.destination) == ("+4915112345678", "+4930123456")


@pytest.mark.parametrize("missing", ["MessageSid", "From", "To"])
def test_inbound_message_without_a_required_field_is_refused(missing):
    params = {"MessageSid": "SM9", "From": "+1", "To": "+2", "Body": "hi"}
    del params[missing]

    with pytest.raises(MappingError) as raised:
        twilio.map_inbound_message(params, RECEIVED_AT)

    assert raised.value.field == missing


def test_inbound_message_names_match_ignoring_letter_case():
    params = {"messagesid": "SM10", "FROM": "+1", "to": "+2", "BODY": "yes"}

    message = twilio.map_inbound_message(params, RECEIVED_AT)

    assert (message.vendor_message_id, message.source, message.body) == ("SM10", "+1", "yes")


@pytest.mark.parametrize(
    ("error_code", "bad_number"),
    [("21211", True), ("21610", True), ("21614", True), ("30005", True), ("30003", False),
     ("21617", False), ("21608", False), ("21408", False), ("21212", False), ("", False)],
)
def test_names_a_bad_number_only_for_the_codes_that_hard_bounce(error_code, bad_number):
    assert twilio.names_a_bad_number(error_code) is bad_number


@pytest.mark.parametrize(
    ("status", "error_code", "status_code"),
    [
        ("x" * 41, None, "x" * 40),
        ("x" * 5000, "", "x" * 40),
        ("x" * 41, "30003", "30003"),
    ],
)
def test_status_too_long_to_store_is_an_unknown_status_cut_to_fit(status, error_code, status_code):
    params = callback(status, error_code)

    report = twilio.map_delivery_report(params, RECEIVED_AT)

    assert (report.outcome, report.status_code, report.status_text) == (Outcome.UNKNOWN, status_code, status)
    assert not twilio.is_recognised(params)
