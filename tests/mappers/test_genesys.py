"""Genesys delivery receipts and MO messages map to the normalised vocabulary."""
from __future__ import annotations

from datetime import datetime

import pytest

from mappers import genesys
from mappers.report import ErrorType, MappingError, Outcome

RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9)


def receipt(state: str, result_code: str | None = "0", **extra: str) -> dict[str, str]:
    """Return a receipt form as Genesys posts it."""
    params = {"type": "receipt", "message_id": "gen-1", "message_state": state, **extra}
    if result_code is not None:
        params["result_code"] = result_code
    return params


@pytest.mark.parametrize(
    ("state", "result_code", "outcome", "error_type"),
    [
        ("2", "0", Outcome.DELIVERED, None),
        ("1", "0", Outcome.ACCEPTED, None),
        ("6", "0", Outcome.ACCEPTED, None),
        ("3", "0", Outcome.SOFTBOUNCE, None),
        ("4", "0", Outcome.SOFTBOUNCE, None),  # Deleted by aggregator: our documented choice.
        ("5", "0", Outcome.HARDBOUNCE, None),
        ("8", "0", Outcome.HARDBOUNCE, None),
        ("8", "1", Outcome.HARDBOUNCE, None),
        ("8", "99", Outcome.ERROR, ErrorType.UNKNOWN),  # rejected for no named reason
        ("5", "99", Outcome.HARDBOUNCE, None),
        ("8", "6", Outcome.ERROR, ErrorType.UNKNOWN),
        ("8", "98", Outcome.ERROR, ErrorType.UNKNOWN),
        ("5", "6", Outcome.ERROR, ErrorType.UNKNOWN),  # throttled: "Please resubmit", whatever the state
        ("3", "98", Outcome.ERROR, ErrorType.UNKNOWN),
        ("8", "7", Outcome.ACCEPTED, None),  # a duplicate message_id: the original's receipts decide
        ("8", "8", Outcome.ERROR, ErrorType.UNKNOWN),  # our body was too long, not the number's fault
        ("8", "3", Outcome.ERROR, ErrorType.UNKNOWN),  # carrier invalid: Genesys chose the route, not the number
        ("5", "3", Outcome.ERROR, ErrorType.UNKNOWN),
        ("8", "2", Outcome.ERROR, ErrorType.AUTHENTICATION),
        ("5", "2", Outcome.ERROR, ErrorType.AUTHENTICATION),
        # A result code details a failure only: it never overrides an en-route, accepted or
        # delivered state.
        ("1", "2", Outcome.ACCEPTED, None),
        ("2", "6", Outcome.DELIVERED, None),
        ("2", "98", Outcome.DELIVERED, None),
        ("6", "8", Outcome.ACCEPTED, None),
        ("7", "6", Outcome.ERROR, ErrorType.UNKNOWN),
        ("8", "4", Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
        ("8", "5", Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
        ("5", "4", Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
        ("7", "0", Outcome.UNKNOWN, None),
        ("2", None, Outcome.DELIVERED, None),
        ("08", "06", Outcome.ERROR, ErrorType.UNKNOWN),
    ],
)
def test_receipt_state_and_result_code_map_to_outcome(state, result_code, outcome, error_type):
    report = genesys.map_delivery_report(receipt(state, result_code), RECEIVED_AT)

    assert (report.outcome, report.error_type) == (outcome, error_type)
    assert genesys.is_recognised(receipt(state, result_code))


def test_receipt_carries_id_raw_codes_and_received_time():
    report = genesys.map_delivery_report(receipt("8", "6", app_id="app"), RECEIVED_AT)

    assert report.vendor_message_id == "gen-1"
    assert report.recipient is None
    assert (report.status_code, report.status_text) == ("8:6", "rejected: throttled, resubmit")
    assert report.event_at == RECEIVED_AT


def test_receipt_without_result_code_has_state_as_status_code():
    report = genesys.map_delivery_report(receipt("2", None), RECEIVED_AT)

    assert (report.status_code, report.status_text) == ("2", "delivered")


@pytest.mark.parametrize(
    ("state", "result_code", "status_text"),
    [
        ("2", "0", "delivered"),
        ("5", "1", "undeliverable: rejected upstream, check number and carrier"),
        ("8", "8", "rejected: message body too long"),
        ("3", "98", "expired: Genesys internal error, try again"),
        ("5", "42", "undeliverable: result_code 42"),
        ("9", "0", "message_state 9"),
        ("9", "6", "message_state 9"),  # a result code details failure states only
        ("2", "6", "delivered"),
    ],
)
def test_status_text_names_the_state_and_the_result_code(state, result_code, status_text):
    assert genesys.map_delivery_report(receipt(state, result_code), RECEIVED_AT).status_text == status_text


@pytest.mark.parametrize(
    ("state", "result_code"),
    # A result code that would decide a failure state does not make an unknown state known.
    [("9", "0"), ("", "0"), ("abc", "0"), ("99", "42"), ("²", "0"), ("9", "³"), ("9", "2"), ("", "6")],
)
def test_unknown_state_maps_to_unknown_and_keeps_raw_value(state, result_code):
    params = receipt(state, result_code)

    report = genesys.map_delivery_report(params, RECEIVED_AT)

    assert report.outcome is Outcome.UNKNOWN
    assert report.error_type is None
    assert report.status_code == f"{state}:{result_code}"
    assert not genesys.is_recognised(params)


def test_parameter_names_match_ignoring_letter_case():
    params = {"TYPE": "Receipt", "Message_ID": "gen-9", "MESSAGE_STATE": "8", "Result_Code": "98"}

    report = genesys.map_delivery_report(params, RECEIVED_AT)

    assert (report.vendor_message_id, report.outcome) == ("gen-9", Outcome.ERROR)


@pytest.mark.parametrize("message_id", [None, "", "   "])
def test_receipt_without_message_id_is_refused(message_id):
    params = receipt("2")
    del params["message_id"]
    if message_id is not None:
        params["message_id"] = message_id

    with pytest.raises(MappingError) as raised:
        genesys.map_delivery_report(params, RECEIVED_AT)

    assert raised.value.field == "message_id"


@pytest.mark.parametrize(
    ("overrides", "state", "result_code", "outcome", "error_type"),
    [
        ({"8": Outcome.SOFTBOUNCE}, "8", "1", Outcome.SOFTBOUNCE, None),
        ({"8": Outcome.SOFTBOUNCE}, "8", "6", Outcome.ERROR, ErrorType.UNKNOWN),  # *:6 is more specific
        ({"8:6": Outcome.HARDBOUNCE}, "8", "6", Outcome.HARDBOUNCE, None),
        ({"*:2": (Outcome.ERROR, ErrorType.UNKNOWN)}, "8", "2", Outcome.ERROR, ErrorType.UNKNOWN),
        ({"8:2": Outcome.HARDBOUNCE}, "8", "2", Outcome.HARDBOUNCE, None),
        ({"4": Outcome.HARDBOUNCE}, "4", "0", Outcome.HARDBOUNCE, None),
        ({"9": Outcome.DELIVERED}, "9", "0", Outcome.DELIVERED, None),
        ({"*:8": Outcome.ERROR}, "8", "8", Outcome.ERROR, ErrorType.UNKNOWN),
        ({" 3 ": Outcome.HARDBOUNCE}, "3", "0", Outcome.HARDBOUNCE, None),
    ],
)
def test_overrides_take_precedence_over_built_in_table(overrides, state, result_code, outcome,
                                                         error_type):
    report = genesys.map_delivery_report(receipt(state, result_code), RECEIVED_AT, overrides)

    assert (report.outcome, report.error_type) == (outcome, error_type)


def test_override_of_a_state_leaves_more_specific_built_in_entries():
    overrides = {"8": Outcome.SOFTBOUNCE}

    report = genesys.map_delivery_report(receipt("8", "2"), RECEIVED_AT, overrides)

    assert (report.outcome, report.error_type) == (Outcome.ERROR, ErrorType.AUTHENTICATION)


def test_mo_maps_to_inbound_message():
    params = {"type": "MO", "message_id": "mo-1", "shortcode": "99222",
              "phone_number": "447700900000", "carrier": "99901", "message": " Hi there "}

    message = genesys.map_inbound_message(params, RECEIVED_AT)

    assert message.vendor_message_id == "mo-1"
    assert (message.source, message.destination) == ("447700900000", "99222")
    assert message.body == " Hi there "
    assert message.received_at == RECEIVED_AT


@pytest.mark.parametrize("missing", ["message_id", "phone_number", "shortcode"])
def test_mo_without_a_required_field_is_refused(missing):
    params = {"type": "MO", "message_id": "mo-1", "shortcode": "99222",
              "phone_number": "447700900000", "message": "Hi"}
    del params[missing]

    with pytest.raises(MappingError) as raised:
        genesys.map_inbound_message(params, RECEIVED_AT)

    assert raised.value.field == missing


def test_mo_without_body_has_empty_body():
    params = {"Type": "mo", "Message_Id": "mo-2", "ShortCode": "1", "Phone_Number": "2"}

    assert genesys.map_inbound_message(params, RECEIVED_AT).body == ""


@pytest.mark.parametrize(
    ("mapper", "params"),
    [
        (genesys.map_delivery_report,
         {"type": "MO", "message_id": "m", "shortcode": "1", "phone_number": "2"}),
        (genesys.map_inbound_message,
         {"type": "receipt", "message_id": "m", "message_state": "2", "result_code": "0"}),
    ],
)
def test_request_of_the_other_type_is_refused(mapper, params):
    with pytest.raises(MappingError) as raised:
        mapper(params, RECEIVED_AT)

    assert raised.value.field == "type"


@pytest.mark.parametrize(("kind", "inbound"), [("MO", True), ("mo", True), ("receipt", False)])
def test_is_inbound_tells_mo_from_receipt(kind, inbound):
    assert genesys.is_inbound({"Type": kind}) is inbound


@pytest.mark.parametrize(
    ("phone_number", "shortcode", "expected"),
    [
        # A `+` sent un-encoded in a query string arrives as a space.
        (" 4915112345", "99222", ("+4915112345", "99222")),
        ("447700900000", " 4930123456", ("447700900000", "+4930123456")),
        ("+4915112345", "99222", ("+4915112345", "99222")),
        (" 44 7700 900000", "ACME", ("44 7700 900000", "ACME")),
    ],
)
def test_mo_numbers_whose_plus_arrived_un_encoded_get_it_back(phone_number, shortcode, expected):
    params = {"type": "MO", "message_id": "mo-3", "shortcode": shortcode, "phone_number": phone_number}

    message = genesys.map_inbound_message(params, RECEIVED_AT)

    assert (message.source, message.destination) == expected


@pytest.mark.parametrize(
    ("state", "result_code", "outcome", "status_code"),
    [
        ("9" * 41, "0", Outcome.UNKNOWN, "9" * 40),
        ("1" * 5000, None, Outcome.UNKNOWN, "1" * 40),
        ("2", "7" * 5000, Outcome.DELIVERED, "2"),
    ],
)
def test_a_receipt_too_long_to_store_is_stored_with_its_code_cut_to_fit(state, result_code, outcome, status_code):
    report = genesys.map_delivery_report(receipt(state, result_code), RECEIVED_AT)

    assert (report.outcome, report.status_code) == (outcome, status_code)
