"""Domain exceptions that carry their HTTP status, and the one place that renders them."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import click
from flask import Flask, jsonify, request
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from mappers.report import MappingError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge


class StartupError(click.ClickException):
    """A setting or file the service cannot start with; on the command line, one line that names it."""


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status_code = 400
    error = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, headers: dict | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body for this error."""
        if self.body is not None:
            return self.body
        payload: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.field:
            payload["field"] = self.field
        return payload


class InvalidParameter(ServiceError):
    """A request parameter is missing or malformed."""

    status_code = 400
    error = "invalid_parameter"


class UnsupportedMediaType(ServiceError):
    """A request body in a format this endpoint does not read."""

    status_code = 415
    error = "unsupported_media_type"


class Unauthorized(ServiceError):
    """Credentials are missing or wrong."""

    status_code = 401
    error = "unauthorized"


class Forbidden(ServiceError):
    """Credentials are valid but do not grant this request."""

    status_code = 403
    error = "forbidden"


class NotFound(ServiceError):
    """The addressed resource does not exist."""

    status_code = 404
    error = "not_found"


class Unavailable(ServiceError):
    """A dependency (usually the database) cannot serve the request right now."""

    status_code = 503
    error = "unavailable"


def validation_error_body(messages: dict[str, Any]) -> dict[str, Any]:
    """Return a 400 body naming the first faulty field and listing every fault."""
    field = next(iter(messages), None)
    fault = messages.get(field)
    first = fault[0] if isinstance(fault, list) and fault else fault
    return {"error": "invalid_parameter", "field": field, "message": f"{field} {first}",
            "fields": messages}


def is_database_unavailable(exc: Exception) -> bool:
    """Tell whether a database error means "retry later" rather than a fault in the request or the code."""
    transient = (PoolTimeoutError, OperationalError, InterfaceError)
    return isinstance(exc, transient) or getattr(exc, "connection_invalidated", False)


# What the service's routes use, and what HTTP clients send without a route in mind.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class UnknownMethodMiddleware:
    """Answer a request whose method no route can have with a JSON 501, before Flask sees it.

    Flask would answer 405, but only after the metrics exporter had counted the request under
    its method: anyone could then add series to /metrics without end (`curl -X ABCDE`).
    """

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Pass a known method on; answer any other one 501."""
        method = environ.get("REQUEST_METHOD", "")
        if method in KNOWN_METHODS:
            return self.wsgi_app(environ, start_response)
        body = json.dumps({"error": "not_implemented", "field": "method",
                           "message": f"HTTP method {method[:20]!r} is not implemented"}).encode()
        start_response("501 Not Implemented", [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body)))])
        return [body]


# What a request got wrong, for werkzeug's own errors, as the `field` of their JSON answer.
FIELD_OF_HTTP_ERROR = {404: "path", 405: "method", 413: "body", 414: "path", 431: "headers"}


def _http_fault(exc: HTTPException) -> str:
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        allowed = sorted(set(exc.valid_methods) - {"HEAD", "OPTIONS"}) or sorted(exc.valid_methods)
        return f"{request.method} is not allowed here; use {' or '.join(allowed)}"
    limit = request.max_content_length
    # werkzeug raises the same error for too many form parts: only a body past the limit is too large.
    if isinstance(exc, RequestEntityTooLarge) and limit and (request.content_length or 0) > limit:
        return f"the body is larger than the {limit} bytes this URL takes"
    return exc.description or exc.name


def register_error_handlers(app: Flask) -> None:
    """Answer every error as JSON, never as an HTML page or a traceback."""
    app.wsgi_app = UnknownMethodMiddleware(app.wsgi_app)

    @app.errorhandler(ServiceError)
    def handle_service_error(exc: ServiceError):
        """Answer a domain error with its own status, body and headers."""
        return jsonify(exc.to_dict()), exc.status_code, exc.headers

    @app.errorhandler(ValidationError)
    def handle_validation_error(exc: ValidationError):
        """Answer a schema violation with 400 and the fields at fault."""
        return jsonify(validation_error_body(exc.normalized_messages())), 400

    @app.errorhandler(MappingError)
    def handle_mapping_error(exc: MappingError):
        """Answer a vendor request a mapper cannot read with 400 naming the parameter."""
        body = {"error": "invalid_parameter", "field": exc.field, "message": f"{exc.field} {exc.fault}"}
        return jsonify(body), 400

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        """Answer werkzeug's own errors (404, 405, 413...) as JSON with their status, naming what is at fault."""
        body = {"error": (exc.name or "error").lower().replace(" ", "_"), "message": _http_fault(exc)}
        if exc.code in FIELD_OF_HTTP_ERROR:
            body["field"] = FIELD_OF_HTTP_ERROR[exc.code]
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return jsonify(body), exc.code or 500, headers

    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeoutError)
    def handle_database_down(exc: DBAPIError | PoolTimeoutError):
        """Answer 503 while the database is unreachable or every connection is busy."""
        if not is_database_unavailable(exc):
            return handle_unexpected(exc)
        # Nothing was committed, so the caller must retry: 503, never a 2xx.
        app.logger.error("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
        return jsonify({"error": "unavailable", "message": "database unavailable, retry later"}), 503

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        """Log an unexpected error with its traceback and answer a bare JSON 500."""
        app.logger.exception("unhandled error")
        return jsonify({"error": "internal_error", "message": "internal server error"}), 500
