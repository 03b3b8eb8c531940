"""Logging: one JSON object per line on stdout, with request context and masked phone numbers."""
from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from flask import Flask, Response, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

# Six or more digits in a row (optionally after +): long enough to be a phone number, not a
# status code. Or digits in groups as numbers are written ("+49 151 1234 5678", "0151-1234-5678",
# "(0151) 1234567", "0151/12345678"), starting like one (+, a bracket or a 0), so that dates and
# times ("01/Dec/2026 16:14") keep their digits; dots make decimals, not groups. Runs inside
# identifiers (UUIDs, hex ids) are left alone. All digits but the last four are masked.
PHONE_NUMBER = re.compile(
    r"(?<![\w-])(?:\+?\d{6,}|(?:\+|\(|(?=0))[\d()]*\d(?:[ /()-]{1,2}\d+)+\)?)(?![\w-])")
MIN_PHONE_DIGITS = 6
# A run of token characters this long is a callback token (or a guess at one): an unmatched path
# that carries one, such as a mistyped callback URL, is logged without it. Any such run, not only a
# whole segment: a URL pasted with what followed it ("<token>.", "<token> ") still hides its token.
TOKEN_LIKE_SEGMENT = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CONTEXT_FIELDS = ("request_id", "route", "client_id", "vendor")
# gunicorn's access log prints this WSGI environ key (`%({sms_status.route}e)s`) instead of the
# raw path, whose query string carries phone numbers and texts and whose path carries tokens.
ROUTE_ENVIRON_KEY = "sms_status.route"
# gunicorn's access log prints this one too (`%({sms_status.request_id}e)s`): its lines and the app's match.
REQUEST_ID_ENVIRON_KEY = "sms_status.request_id"
STARTED_ENVIRON_KEY = "sms_status.started"
# Platform probes every few seconds would drown the log; their lines are DEBUG.
QUIET_ROUTES = frozenset({"/health", "/metrics"})
# A campaign burst brings thousands of vendor receipts a second: a line each would exceed Cloud
# Foundry's log rate limit and drop the lines that matter. Stored receipts are in raw_events
# and in the access log, so their lines are DEBUG; a refused receipt is still logged.
QUIET_WHEN_ANSWERED_2XX = frozenset({"vendors"})
MAX_REQUEST_ID_LENGTH = 128
request_log = logging.getLogger("sms_status.request")


def mask_phone_numbers(text: str) -> str:
    """Replace every digit of a phone-number-like run but the last four with `*`."""
    return PHONE_NUMBER.sub(lambda match: _masked_if_long_enough(match.group(0)), text)


def _masked_if_long_enough(run: str) -> str:
    return mask_digits(run) if sum(character.isdigit() for character in run) >= MIN_PHONE_DIGITS else run


def mask_digits(value: str) -> str:
    """Replace every digit but the last four with `*`."""
    digits_left = sum(character.isdigit() for character in value)
    masked = []
    for character in value:
        if character.isdigit():
            digits_left -= 1
            character = character if digits_left < 4 else "*"
        masked.append(character)
    return "".join(masked)


def request_route() -> str:
    """Return the matched route template (never the token or ids in the path), else the masked path."""
    rule = request.url_rule
    return rule.rule if rule is not None else mask_phone_numbers(TOKEN_LIKE_SEGMENT.sub("<token>", request.path))


def request_context() -> dict[str, str | None]:
    """Return the current request's id, route, client id and vendor."""
    view_args = request.view_args or {}
    client_id = g.get("client_id") or view_args.get("client_id")
    # Path segments are the caller's text until a view has checked them (an unknown vendor, a
    # client id that is no UUID): masked as an unmatched path is. UUIDs keep their digits.
    return {"request_id": request.environ.get(REQUEST_ID_ENVIRON_KEY), "route": request_route(),
            "client_id": None if client_id is None else mask_phone_numbers(str(client_id)),
            "vendor": g.get("vendor") or masked_segment(view_args.get("vendor"))}


def masked_segment(value: str | None) -> str | None:
    """Return a path segment with token-like runs and phone numbers masked."""
    return None if value is None else mask_phone_numbers(TOKEN_LIKE_SEGMENT.sub("<token>", value))


class RequestContextFilter(logging.Filter):
    """Add request id, route, client id and vendor to records, and mask phone numbers."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill in the request context the record lacks, mask its message, and keep it."""
        context = request_context() if has_request_context() else {}
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, context.get(name))
        message = mask_phone_numbers(record.getMessage())
        record.msg, record.args = message, None
        return True


class ServiceJsonFormatter(JsonFormatter):
    """One JSON object per line, with an ISO 8601 UTC time and masked phone numbers in tracebacks."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Return the record's time as ISO 8601 UTC with milliseconds."""
        return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")

    def formatException(self, ei) -> str:
        """Return the traceback with phone numbers masked (exception texts may quote them)."""
        return mask_phone_numbers(super().formatException(ei))


def json_lines(handler: logging.Handler) -> logging.Handler:
    """Make the handler write one masked JSON object per line, with the request context, and return it."""
    handler.setFormatter(ServiceJsonFormatter(LOG_FORMAT, rename_fields={"asctime": "time", "levelname": "level"}))
    handler.addFilter(RequestContextFilter())
    return handler


def configure(app: Flask) -> None:
    """Send JSON logs to stdout, tag requests with an id, and warn about unsafe settings."""
    handler = json_lines(logging.StreamHandler(sys.stdout))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "sms_status", False)]
    handler.sms_status = True
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    app.logger.handlers = []  # propagate to the root handler, once
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)
    app.after_request(log_request)
    warn_about_open_endpoints(app)


class RequestIdMiddleware:
    """Give every request an id, the platform's or a new one, and answer it as X-Request-Id.

    WSGI middleware rather than a Flask hook: it also tags requests Flask refuses before any hook
    runs, and costs a vendor receipt two environ entries instead of a hook and a header lookup.
    Every answer also says `X-Content-Type-Options: nosniff`: a JSON error that quotes a caller's
    input is never taken for HTML by a browser.
    """

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Tag the request in its environ, then run the app with X-Request-Id added to its answer."""
        request_id = environ[REQUEST_ID_ENVIRON_KEY] = given_request_id(environ) or secrets.token_hex(16)
        environ[STARTED_ENVIRON_KEY] = time.perf_counter()

        def start_response_with_id(status: str, headers: list, exc_info=None):
            headers.append(("X-Request-Id", request_id))
            headers.append(("X-Content-Type-Options", "nosniff"))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start_response_with_id)


def given_request_id(environ: dict) -> str | None:
    """Return the platform's request id (Cloud Foundry's X-Vcap-Request-Id), if it is usable."""
    given = environ.get("HTTP_X_VCAP_REQUEST_ID") or environ.get("HTTP_X_REQUEST_ID")
    # It is echoed in a response header: printable ASCII only, and bounded.
    if given and given.isascii() and given.isprintable():
        return given[:MAX_REQUEST_ID_LENGTH]
    return None


def log_request(response: Response) -> Response:
    """Log the request's one line: method, route and status, never its query string or body."""
    environ = request.environ
    route = environ[ROUTE_ENVIRON_KEY] = request_route()
    level = request_log_level(response.status_code)
    if request_log.isEnabledFor(level):
        started = environ.get(STARTED_ENVIRON_KEY)
        duration_ms = None if started is None else round((time.perf_counter() - started) * 1000, 1)
        request_log.log(level, "%s %s %s", request.method, route, response.status_code,
                        extra={"method": request.method, "status": response.status_code,
                               "duration_ms": duration_ms})
    return response


def request_log_level(status: int) -> int:
    """Return the level of a request's line: DEBUG for probes and for vendor receipts answered 2xx."""
    rule = request.url_rule
    if rule is not None and rule.rule in QUIET_ROUTES:
        return logging.DEBUG
    if status < 300 and request.blueprint in QUIET_WHEN_ANSWERED_2XX:
        return logging.DEBUG
    return logging.INFO


def warn_about_open_endpoints(app: Flask) -> None:
    """Log a loud warning when production runs without the SAP pull's credentials."""
    creds = app.config.get("SAP_STATUS_USERNAME") and app.config.get("SAP_STATUS_PASSWORD")
    if app.config.get("PRODUCTION") and not creds:
        app.logger.warning(
            "SECURITY WARNING: SAP_STATUS_USERNAME/SAP_STATUS_PASSWORD are not set; "
            "GET /status answers 503 until they are. Set them to the SAP communication user's credentials.")
