"""Expertflow delivery notifications and received messages map to the normalised vocabulary."""
from __future__ import annotations

from datetime import datetime

import pytest

from mappers import expertflow
from mappers.report import ErrorType, MappingError, Outcome

RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9)


@pytest.mark.parametrize("status_name", ["SmsStatus", "MessageStatus", "DeliveryStatus"])
@pytest.mark.parametrize(
    ("status", "outcome", "error_type"),
    [
        ("delivered", Outcome.DELIVERED, None),
        ("queued", Outcome.ACCEPTED, None),
        ("sent", Outcome.ACCEPTED, None),
        ("undelivered", Outcome.SOFTBOUNCE, None),
        # The sender's refusal, not the number's: a Temporary bounce, never a Permanent one.
        ("failed", Outcome.ERROR, ErrorType.UNKNOWN),
        ("DELIVERED", Outcome.DELIVERED, None),
        ("Failed", Outcome.ERROR, ErrorType.UNKNOWN),
        ("FAILED", Outcome.ERROR, ErrorType.UNKNOWN),
    ],
)
def test_status_maps_to_outcome(status_name, status, outcome, error_type):
    params = {"MessageSid": "ef-1", status_name: status}

    report = expertflow.map_delivery_report(params, RECEIVED_AT)

    assert (report.outcome, report.error_type) == (outcome, error_type)
    assert (report.status_code, report.status_text) == (status, status)
    assert expertflow.is_recognised(params)


@pytest.mark.parametrize(
    ("provider_code", "status_code"),
    [("30008", "30008"), ("", "FAILED"), (None, "FAILED"), ("E" * 41, "FAILED")],
)
def test_active_mq_delivery_report_relayed_as_a_form_is_read(provider_code, status_code):
    params = {"MessageSID": "ef-9", "DeliveryStatus": "FAILED"}
    if provider_code is not None:
        params["ProviderStatusCode"] = provider_code

    report = expertflow.map_delivery_report(params, RECEIVED_AT)

    assert (report.vendor_message_id, report.outcome) == ("ef-9", Outcome.ERROR)
    assert (report.status_code, report.status_text) == (status_code, "FAILED")


def test_notification_carries_id_and_received_time():
    report = expertflow.map_delivery_report({"MessageSid": "ef-2", "SmsStatus": "sent"},
                                            RECEIVED_AT)

    assert report.vendor_message_id == "ef-2"
    assert report.recipient is None
    assert report.event_at == RECEIVED_AT


def test_sms_status_is_preferred_over_message_status():
    params = {"MessageSid": "ef-3", "SmsStatus": "delivered", "MessageStatus": "sent"}

    assert expertflow.map_delivery_report(params, RECEIVED_AT).outcome is Outcome.DELIVERED


@pytest.mark.parametrize(
    "params",
    [
        {"MessageSid": "ef-4", "SmsStatus": "read"},
        {"MessageSid": "ef-4", "MessageStatus": "lost"},
        {"MessageSid": "ef-4"},
    ],
)
def test_unknown_or_missing_status_maps_to_unknown(params):
    report = expertflow.map_delivery_report(params, RECEIVED_AT)

    assert report.outcome is Outcome.UNKNOWN
    assert report.status_code == params.get("SmsStatus", params.get("MessageStatus", ""))
    assert not expertflow.is_recognised(params)


def test_parameter_names_match_ignoring_letter_case():
    params = {"MESSAGESID": "ef-5", "smsstatus": "undelivered", "TO": "+441234"}

    report = expertflow.map_delivery_report(params, RECEIVED_AT)

    assert (report.vendor_message_id, report.recipient) == ("ef-5", "+441234")
    assert report.outcome is Outcome.SOFTBOUNCE


@pytest.mark.parametrize("message_sid", [None, "", " "])
def test_notification_without_message_sid_is_refused(message_sid):
    params = {"SmsStatus": "delivered"}
    if message_sid is not None:
        params["MessageSid"] = message_sid

    with pytest.raises(MappingError) as raised:
        expertflow.map_delivery_report(params, RECEIVED_AT)

    assert raised.value.field == "MessageSid"


@pytest.mark.parametrize(
    ("overrides", "status", "outcome", "error_type"),
    [
        ({"undelivered": Outcome.HARDBOUNCE}, "undelivered", Outcome.HARDBOUNCE, None),
        ({"FAILED": Outcome.SOFTBOUNCE}, "failed", Outcome.SOFTBOUNCE, None),
        ({"rejected": (Outcome.ERROR, ErrorType.INSUFFICIENT_CREDIT)}, "rejected",
         Outcome.ERROR, ErrorType.INSUFFICIENT_CREDIT),
        ({"rejected": Outcome.ERROR}, "rejected", Outcome.ERROR, ErrorType.UNKNOWN),
    ],
)
def test_overrides_take_precedence_over_built_in_table(overrides, status, outcome, error_type):
    params = {"MessageSid": "ef-6", "SmsStatus": status}

    report = expertflow.map_delivery_report(params, RECEIVED_AT, overrides)

    assert (report.outcome, report.error_type) == (outcome, error_type)


PROVIDER_CODE_OVERRIDES = {"failed:21211": Outcome.HARDBOUNCE, "*:ESME_RINVDSTADR": Outcome.HARDBOUNCE,
                           "*:30007": (Outcome.ERROR, ErrorType.UNKNOWN)}


@pytest.mark.parametrize(
    ("status", "provider_code", "outcome", "error_type"),
    [
        ("FAILED", "21211", Outcome.HARDBOUNCE, None),  # status:code
        ("undelivered", "21211", Outcome.SOFTBOUNCE, None),  # that code with another status: the status
        ("failed", "esme_rinvdstadr", Outcome.HARDBOUNCE, None),  # *:code, in any letter case
        ("undelivered", "30007", Outcome.ERROR, ErrorType.UNKNOWN),
        ("failed", "1", Outcome.ERROR, ErrorType.UNKNOWN),  # a code no key names: the status
        ("failed", "", Outcome.ERROR, ErrorType.UNKNOWN),
    ],
)
def test_an_operator_can_name_provider_status_codes(status, provider_code, outcome, error_type):
    params = {"MessageSID": "ef-8", "DeliveryStatus": status, "ProviderStatusCode": provider_code}

    report = expertflow.map_delivery_report(params, RECEIVED_AT, PROVIDER_CODE_OVERRIDES)

    assert (report.outcome, report.error_type) == (outcome, error_type)
    assert expertflow.is_recognised(params, PROVIDER_CODE_OVERRIDES)


def test_override_leaves_other_statuses_alone():
    overrides = {"undelivered": Outcome.HARDBOUNCE}
    params = {"MessageSid": "ef-7", "SmsStatus": "failed"}

    assert expertflow.map_delivery_report(params, RECEIVED_AT, overrides).outcome \
        is Outcome.ERROR
    assert expertflow.map_delivery_report({**params, "SmsStatus": "sent"}, RECEIVED_AT,
                                          overrides).outcome is Outcome.ACCEPTED


def test_numbers_whose_plus_arrived_un_encoded_get_it_back():
    report = expertflow.map_delivery_report({"MessageSid": "ef-4", "SmsStatus": "failed", "To": " 441111"},
                                            RECEIVED_AT)
    message = expertflow.map_inbound_message({"Body": "hi", "From": " 441111", "To": "442222", "SmsSid": "in-2"},
                                             RECEIVED_AT)

    assert report.recipient == "+441111"
    assert (message.source, message.destination) == ("+441111", "442222")


def test_received_message_maps_to_inbound_message():
    params = {"Body": "Hello\n", "From": "+441111", "To": "+442222", "SmsSid": "in-1"}

    message = expertflow.map_inbound_message(params, RECEIVED_AT)

    assert message.vendor_message_id == "in-1"
    assert (message.source, message.destination) == ("+441111", "+442222")
    assert message.body == "Hello\n"
    assert message.received_at == RECEIVED_AT


def test_received_message_names_match_ignoring_letter_case():
    params = {"body": "x", "FROM": "+1", "to": "+2", "smssid": "in-2"}

    assert expertflow.map_inbound_message(params, RECEIVED_AT).vendor_message_id == "in-2"


@pytest.mark.parametrize("missing", ["SmsSid", "From", "To"])
def test_received_message_without_a_required_field_is_refused(missing):
    params = {"Body": "x", "From": "+1", "To": "+2", "SmsSid": "in-3"}
    del params[missing]

    with pytest.raises(MappingError) as raised:
        expertflow.map_inbound_message(params, RECEIVED_AT)

    assert raised.value.field == missing


@pytest.mark.parametrize("status_name", ["SmsStatus", "MessageStatus", "DeliveryStatus"])
@pytest.mark.parametrize(
    ("status", "provider_code", "status_code"),
    [
        ("x" * 41, None, "x" * 40),
        ("x" * 5000, "E" * 41, "x" * 40),
        ("x" * 41, "30008", "30008"),
    ],
)
def test_status_too_long_to_store_is_an_unknown_status_cut_to_fit(status_name, status, provider_code,
                                                                   status_code):
    params = {"MessageSid": "ef-9", status_name: status}
    if provider_code is not None:
        params["ProviderStatusCode"] = provider_code

    report = expertflow.map_delivery_report(params, RECEIVED_AT)

    assert (report.outcome, report.status_code, report.status_text) == (Outcome.UNKNOWN, status_code, status)
    assert not expertflow.is_recognised(params)
