"""Tests of outbound batch validation against the spec's 400 rules."""
from __future__ import annotations

import json

import pytest

from errors import ServiceError
from schemas.outbound import (MAX_BATCH_SIZE, OutboundBatchError, OutboundMessage, client_error,
                              load_outbound_batch, load_outbound_batch_json)
from tests.emarsys_spec import requires_spec, validate_schema

SPEC = "partner-service.yaml"


def message(emarsys_message_id: str = "m-1", **overrides: object) -> dict:
    """Return one valid outbound message, with fields overridden or removed (value ...)."""
    item = {"emarsysMessageId": emarsys_message_id, "source": "ACME",
            "destination": "+36301234567", "message": "Hello"}
    item.update(overrides)
    return {key: value for key, value in item.items() if value is not ...}


def batch(count: int) -> dict:
    """Return a valid batch of `count` distinct messages."""
    return {"messages": [message(f"m-{index}") for index in range(count)]}


def global_error(request_body: object) -> dict:
    """Return the globalError a body raises, after checking it against the spec."""
    with pytest.raises(OutboundBatchError) as caught:
        load_outbound_batch(request_body)
    answer = caught.value.to_dict()
    validate_schema(SPEC, "OutboundMessageBatchGlobalError", answer)
    assert caught.value.status_code == 400
    return answer["globalError"]


def message_errors(request_body: object) -> list[dict]:
    """Return the messageSpecificErrors a body raises, after checking them against the spec."""
    with pytest.raises(OutboundBatchError) as caught:
        load_outbound_batch(request_body)
    answer = caught.value.to_dict()
    validate_schema(SPEC, "OutboundMessageBatchMessageSpecificError", answer)
    assert set(answer) == {"messageSpecificErrors"}
    assert answer["messageSpecificErrors"]
    return answer["messageSpecificErrors"]


def test_valid_batch_returns_its_messages_in_order():
    messages = load_outbound_batch({"messages": [message("a"), message("b", destination="3630123")]})

    assert messages == [OutboundMessage("a", "ACME", "+36301234567", "Hello"),
                        OutboundMessage("b", "ACME", "3630123", "Hello")]


def test_batch_of_exactly_the_limit_is_accepted():
    assert len(load_outbound_batch(batch(MAX_BATCH_SIZE))) == MAX_BATCH_SIZE


def test_unknown_message_properties_are_ignored():
    messages = load_outbound_batch({"messages": [message(campaignId="c-9")], "launchId": 4})

    assert messages == [OutboundMessage("m-1", "ACME", "+36301234567", "Hello")]


def test_message_body_is_kept_verbatim():
    body = "  Hi Ana,\nyour code is 1234  "

    assert load_outbound_batch({"messages": [message(message=body)]})[0].body == body


def test_outbound_batch_error_is_a_400_service_error():
    assert issubclass(OutboundBatchError, ServiceError)
    assert OutboundBatchError.status_code == 400


@requires_spec
@pytest.mark.parametrize("request_body, fault_word", [
    (None, "object"),
    ([message()], "object"),
    ("messages", "object"),
    ({}, "messages"),
    ({"message": [message()]}, "messages"),
    ({"messages": None}, "array"),
    ({"messages": message()}, "array"),
    ({"messages": []}, "empty"),
    (batch(MAX_BATCH_SIZE + 1), "1000"),
])
def test_payload_level_faults_answer_a_global_emarsys_error(request_body, fault_word):
    error = global_error(request_body)

    assert error["errorType"] == "emarsys"
    assert error["isErrorTransient"] is False
    assert fault_word in error["errorContext"]["fault"]


@requires_spec
@pytest.mark.parametrize("raw", [b"{", b"", "not json", b"\xff\xfe"])
def test_body_that_is_not_json_answers_a_global_emarsys_error(raw):
    with pytest.raises(OutboundBatchError) as caught:
        load_outbound_batch_json(raw)
    answer = caught.value.to_dict()

    validate_schema(SPEC, "OutboundMessageBatchGlobalError", answer)
    assert answer["globalError"]["errorType"] == "emarsys"
    assert "JSON" in answer["globalError"]["errorContext"]["fault"]


def test_raw_json_batch_is_parsed_and_validated():
    assert load_outbound_batch_json(json.dumps(batch(2)).encode())[1].emarsys_message_id == "m-1"


@requires_spec
@pytest.mark.parametrize("bad_message, field, fault_word", [
    (message(source=...), "source", "missing"),
    (message(source=""), "source", "empty"),
    (message(source="   "), "source", "empty"),
    (message(source=None), "source", "missing"),
    (message(destination=...), "destination", "missing"),
    (message(destination=""), "destination", "empty"),
    (message(message=...), "message", "missing"),
    (message(message=""), "message", "empty"),
    (message(message=12), "message", "string"),
    (message(destination="12345"), "destination", "international"),
    (message(destination="+1234567890123456"), "destination", "international"),
    (message(destination="++36301234567"), "destination", "international"),
    (message(destination="+36 30 123 4567"), "destination", "international"),
    (message(destination="36301234567\n"), "destination", "international"),
    (message(destination="3630abc4567"), "destination", "international"),
    (message(destination=36301234567), "destination", "string"),
])
def test_per_message_faults_name_the_message_field_and_fault(bad_message, field, fault_word):
    errors = message_errors({"messages": [message("good"), bad_message]})

    assert [(e["emarsysMessageId"], e["errorType"], e["isErrorTransient"], e["errorContext"]["index"],
             e["errorContext"]["field"]) for e in errors] == [("m-1", "emarsys", False, 1, field)]
    assert fault_word in errors[0]["errorContext"]["fault"]


@pytest.mark.parametrize("destination", ["123456", "+123456", "123456789012345", "+447700900000"])
def test_international_numbers_of_6_to_15_digits_are_accepted(destination):
    assert load_outbound_batch({"messages": [message(destination=destination)]})[0].destination == destination


@requires_spec
@pytest.mark.parametrize("bad_message, field, fault_word", [
    (message(...), "emarsysMessageId", "missing"),
    (message(""), "emarsysMessageId", "empty"),
    (message(None), "emarsysMessageId", "missing"),
    (message(42), "emarsysMessageId", "string"),
    ("just text", "messages[2]", "object"),
    ([message()], "messages[2]", "object"),
])
def test_message_without_usable_id_fails_the_payload_as_a_whole(bad_message, field, fault_word):
    # Reported under an id Emarsys never sent, it could not be matched, and the batch would be
    # resent for ever.
    error = global_error({"messages": [message("good"), message("other"), bad_message]})

    assert (error["errorType"], error["isErrorTransient"]) == ("emarsys", False)
    assert (error["errorContext"]["index"], error["errorContext"]["field"]) == (2, field)
    assert fault_word in error["errorContext"]["fault"]


@requires_spec
def test_an_id_of_spaces_is_an_id():
    assert [m.emarsys_message_id for m in load_outbound_batch({"messages": [message("  ")]})] == ["  "]
    errors = message_errors({"messages": [message("  ", destination="0")]})
    assert [(e["emarsysMessageId"], e["errorContext"]["field"]) for e in errors] == [("  ", "destination")]


@requires_spec
def test_repeated_id_marks_every_later_occurrence():
    errors = message_errors({"messages": [message("a"), message("b"), message("a"), message("a")]})

    assert [(e["emarsysMessageId"], e["errorContext"]["index"]) for e in errors] == [("a", 2), ("a", 3)]
    assert all("messages[0]" in e["errorContext"]["fault"] for e in errors)


@requires_spec
def test_every_bad_message_gets_one_entry_and_good_ones_none():
    messages = [message(f"m-{index}") for index in range(10)]
    messages[3]["destination"] = "0"
    messages[7]["source"] = ""
    messages[7]["message"] = ""

    errors = message_errors({"messages": messages})

    assert [(e["emarsysMessageId"], e["errorContext"]["field"]) for e in errors] == [
        ("m-3", "destination"), ("m-7", "source")]


@requires_spec
def test_id_fault_is_reported_before_other_faults_of_the_message():
    errors = message_errors({"messages": [message("x"), message("x", destination="1")]})

    assert errors[0]["errorContext"]["field"] == "emarsysMessageId"


@requires_spec
def test_too_long_id_is_a_per_message_fault():
    errors = message_errors({"messages": [message("x" * 101)]})

    assert errors[0]["emarsysMessageId"] == "x" * 101
    assert errors[0]["errorContext"]["field"] == "emarsysMessageId"


@requires_spec
def test_client_error_is_a_global_client_error():
    answer = client_error("the stored Twilio credentials were revoked").to_dict()

    validate_schema(SPEC, "OutboundMessageBatchGlobalError", answer)
    assert answer["globalError"]["errorType"] == "client"
    assert answer["globalError"]["isErrorTransient"] is False
    assert answer["globalError"]["errorContext"] == {
        "description": "the stored Twilio credentials were revoked"}
