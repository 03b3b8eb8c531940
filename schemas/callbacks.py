"""Bodies of the Emarsys callbacks (partner-callbacks.yaml): DeliveryReport and InboundMessage."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from mappers.report import DeliveryReport, InboundMessage, Outcome


def rfc3339(moment: datetime) -> str:
    """Render a naive UTC datetime as RFC 3339 with a `Z`."""
    return moment.replace(microsecond=0).isoformat() + "Z"


def delivery_report_item(report: DeliveryReport, emarsys_message_id: str) -> dict[str, Any]:
    """Return one `DeliveryReport` item for the deliveryReports callback."""
    item: dict[str, Any] = {
        "emarsysMessageId": emarsys_message_id,
        "receivedAt": rfc3339(report.event_at),
        "status": report.outcome.value,
        "details": {"providerStatus": report.status_text, "providerCode": report.status_code},
        "providerMessageIds": [report.vendor_message_id],
    }
    if report.outcome is Outcome.ERROR:
        item["errorType"] = (report.error_type.value if report.error_type else "UNKNOWN")
    return item


def emarsys_number(number: str) -> str:
    """Return a phone number as Emarsys writes it, without the `+` ('436771234567'); anything else as it is."""
    # Emarsys sends its numbers so (services.vendors.twilio adds the `+` Twilio needs), and its
    # example InboundMessage reads so: Twilio's From and To, and a Genesys `+` restored, carry one.
    digits = number.removeprefix("+")
    return digits if digits.isascii() and digits.isdigit() else number


def inbound_message_item(message: InboundMessage) -> dict[str, Any]:
    """Return one `InboundMessage` item for the inboundMessages callback."""
    return {
        "messageId": message.vendor_message_id,
        "source": emarsys_number(message.source),
        "destination": emarsys_number(message.destination),
        "message": message.body,
        "receivedAt": rfc3339(message.received_at),
    }
