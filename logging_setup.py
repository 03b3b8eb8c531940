"""Logging: one JSON object per line on stdout, with request context and masked phone numbers."""
from __future__ import annotations

import logging
import re
import sys
import uuid

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

# Six or more digits (optionally after +): long enough to be a phone number, not a status code.
# Everything but the last four digits is matched; the lookahead keeps those four.
# Runs inside identifiers (UUIDs, hex ids) are left alone.
PHONE_NUMBER = re.compile(r"(?<![\w-])\+?\d{2,}(?=\d{4}(?![\w-]))")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def mask_phone_numbers(text: str) -> str:
    """Replace every digit of a phone-number-like run but the last four with `*`."""
    return PHONE_NUMBER.sub(lambda match: "*" * len(match.group(0)), text)


class RequestContextFilter(logging.Filter):
    """Add request id, route, client id and vendor to records, and mask phone numbers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = g.get("request_id")
            record.route = request.url_rule.rule if request.url_rule else request.path
            record.client_id = g.get("client_id")
            record.vendor = (request.view_args or {}).get("vendor") or g.get("vendor")
        message = mask_phone_numbers(record.getMessage())
        record.msg, record.args = message, None
        return True


def configure(app: Flask) -> None:
    """Send JSON logs to stdout, tag requests with an id, and warn about unsafe settings."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(LOG_FORMAT, rename_fields={"asctime": "time", "levelname": "level"}))
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "sms_status", False)]
    handler.sms_status = True
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    app.logger.handlers = []  # propagate to the root handler, once
    app.before_request(assign_request_id)
    warn_about_open_endpoints(app)


def assign_request_id() -> None:
    """Take the platform's request id (Cloud Foundry's X-Vcap-Request-Id) or make one."""
    g.request_id = (request.headers.get("X-Vcap-Request-Id") or request.headers.get("X-Request-Id")
                    or uuid.uuid4().hex)


def warn_about_open_endpoints(app: Flask) -> None:
    """Log a loud warning when production runs the SAP pull without credentials."""
    creds = app.config.get("SAP_STATUS_USERNAME") and app.config.get("SAP_STATUS_PASSWORD")
    if app.config.get("PRODUCTION") and not creds:
        app.logger.warning(
            "SECURITY WARNING: SAP_STATUS_USERNAME/SAP_STATUS_PASSWORD are not set; "
            "GET /status serves bounces to anyone. Set them to the SAP communication user's credentials.")
