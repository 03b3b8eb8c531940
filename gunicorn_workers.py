"""Gunicorn workers that answer the requests gunicorn rejects itself with the app's JSON errors.

Gunicorn refuses some requests before the Flask app sees them (a request line over
`limit_request_line`, too many or too large headers, a malformed request line or HTTP version...)
and answers them with an HTML page. The service's rule is a 4xx JSON body naming the field and
the fault, so these workers keep gunicorn's classification and logging but write that body.

gunicorn.conf.py picks the class. The names matter: gunicorn silently swaps any worker class whose
name ends in "SyncWorker" for its stock (HTML) gthread worker when --threads > 1, so the sync class
here is `SyncJsonWorker` and refuses to start with threads instead of ignoring them.
"""
from __future__ import annotations

import json
from datetime import datetime
from ssl import SSLError

from gunicorn import glogging, util
from gunicorn.http import errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from logging_setup import TOKEN_LIKE_SEGMENT, json_lines, mask_phone_numbers

# A header the app tried to send is the app's fault, a 500, as gunicorn itself treats it.
APP_FAULTS = (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName)
# What each rejection answers: status, reason phrase, the field at fault (None: no single field).
# First match wins, so APP_FAULTS (subclasses of the request-header errors) come first.
REJECTIONS: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str, str | None]] = [
    (APP_FAULTS, 500, "Internal Server Error", None),
    (errors.LimitRequestLine, 414, "URI Too Long", "request line"),
    (errors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers"),
    (errors.InvalidRequestLine, 400, "Bad Request", "request line"),
    (errors.InvalidRequestMethod, 400, "Bad Request", "method"),
    (errors.InvalidHTTPVersion, 400, "Bad Request", "HTTP version"),
    ((errors.InvalidHeader, errors.InvalidHeaderName, errors.ObsoleteFolding,
      errors.InvalidSchemeHeaders), 400, "Bad Request", "headers"),
    (errors.UnsupportedTransferCoding, 501, "Not Implemented", "Transfer-Encoding"),
    (errors.ExpectationFailed, 417, "Expectation Failed", "Expect"),
    ((errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension),
     400, "Bad Request", "body"),
    ((errors.InvalidProxyLine, errors.InvalidProxyHeader), 400, "Bad Request", "PROXY line"),
    (errors.ForbiddenProxyRequest, 403, "Forbidden", None),
    (errors.ConfigurationProblem, 500, "Internal Server Error", None),
    (errors.InvalidH2CPreface, 400, "Bad Request", "HTTP/2 preface"),
    (SSLError, 403, "Forbidden", None),
    # Any other parse error gunicorn may add later is still the client's fault.
    (errors.ParseException, 400, "Bad Request", None),
]


def loggable_path(req) -> str:
    """Return the request's path for a log line: no query string, tokens and phone numbers masked."""
    path = getattr(req, "path", None)
    if not path:
        return "(no path read)"
    return mask_phone_numbers(TOKEN_LIKE_SEGMENT.sub("<token>", path))


def classify(exc: BaseException) -> tuple[int, str, str | None]:
    """Return the status, reason and faulty field for an exception gunicorn caught; 500 if unknown."""
    for kinds, status, reason, field in REJECTIONS:
        if isinstance(exc, kinds):
            return status, reason, field
    return 500, "Internal Server Error", None


def fault_message(exc: BaseException, status: int, cfg) -> str:
    """Return the message of the JSON body: the fault and, for a limit, the limit."""
    if status >= 500:
        # Never a traceback or an internal detail in the answer; the log has them.
        return "internal server error"
    if isinstance(exc, errors.LimitRequestLine):
        # The fast parser raises it without the sizes, so the limit comes from the config.
        return (f"request line (method, path and query string) is longer than the "
                f"{cfg.limit_request_line}-byte limit")
    if isinstance(exc, errors.LimitRequestHeaders):
        return (f"{exc} (at most {cfg.limit_request_fields} header fields "
                f"of {cfg.limit_request_field_size} bytes each)")
    if isinstance(exc, errors.ForbiddenProxyRequest):
        return "request forbidden"
    return str(exc) or "malformed request"


def json_error(status: int, reason: str, message: str, field: str | None) -> bytes:
    """Return a whole HTTP response carrying the app's JSON error shape; the connection closes."""
    payload = {"error": reason.lower().replace(" ", "_").replace("-", "_"), "message": message}
    if field:
        payload["field"] = field
    body = json.dumps(payload).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrorsMixin:
    """Answer gunicorn's own rejections as JSON; logs and access-logs them as gunicorn does."""

    def handle_error(self, req, client, addr, exc):
        """Log the failed request and answer it with a JSON error instead of an HTML page."""
        request_start = datetime.now()
        addr = addr or ("", -1)  # a unix socket has no peer address
        status, reason, field = classify(exc)
        if isinstance(exc, (errors.ParseException, SSLError)) and not isinstance(exc, APP_FAULTS):
            # The kind of fault only: gunicorn's own text quotes the request line, and with it the
            # phone numbers, message texts and callback tokens that the logs never carry.
            self.log.warning("Invalid request from ip=%s: %s (%s)", addr[0], type(exc).__name__,
                             field or "request")
        else:
            self.log.exception("Error handling request %s %s", getattr(req, "method", ""), loggable_path(req))
        if req is None and isinstance(exc, (errors.InvalidHeader, errors.InvalidHeaderName)):
            req = getattr(exc, "req", None)  # the parsed request line, for the access log
        response = json_error(status, reason, fault_message(exc, status, self.cfg), field)
        if req is not None:
            self.access_log(req, client, addr, status, reason, len(response), request_start)
        try:
            util.write_nonblock(client, response)
        except Exception:
            self.log.debug("Failed to send error message.")

    def access_log(self, req, client, addr, status, reason, length, request_start) -> None:
        """Write the rejection's access-log line, as gunicorn's own handle_error does."""
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"] = addr[0]
        environ["REMOTE_PORT"] = str(addr[1])
        resp = Response(req, client, self.cfg)
        resp.status = f"{status} {reason}"
        resp.response_length = length
        self.log.access(resp, req, environ, datetime.now() - request_start)


class SyncJsonWorker(JsonErrorsMixin, SyncWorker):
    """Gunicorn's sync worker, with JSON rejections."""

    @classmethod
    def check_config(cls, cfg, log):
        """Refuse --threads > 1: this worker would ignore them; GUNICORN_THREADS picks the threaded one."""
        if cfg.threads > 1:
            raise RuntimeError(f"--threads {cfg.threads} needs gunicorn_workers.ThreadJsonWorker: set "
                               "GUNICORN_THREADS so gunicorn.conf.py picks it")


class ThreadJsonWorker(JsonErrorsMixin, ThreadWorker):
    """Gunicorn's gthread worker, with JSON rejections."""


class JsonErrorLogger(glogging.Logger):
    """Gunicorn's logger, its error log (start, stop, timeouts, rejections) in the app's JSON lines.

    Tracebacks then stay one line each, with phone numbers masked; the access log keeps its format.
    """

    def setup(self, cfg):
        """Set gunicorn's handlers up, then make the error log's write JSON."""
        super().setup(cfg)
        for handler in self.error_log.handlers:
            json_lines(handler)
