"""Requests gunicorn rejects before the app: JSON answers, a long vendor GET that fits, the access line."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from flask_migrate import upgrade

from app import create_app
from models import db
from tests.pg import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LIMIT = 8190  # gunicorn.conf.py's limit_request_line
SOCKET_TIMEOUT_S = 10
STOP_TIMEOUT_S = 10
# Each running server's log file and access-log file, by port.
LOGS: dict[int, Path] = {}
ACCESS_LOGS: dict[int, Path] = {}


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory) -> str:
    """Return the URL of a migrated SQLite file: gunicorn's rejections need no PostgreSQL."""
    url = f"sqlite:///{tmp_path_factory.mktemp('gunicorn-errors') / 'sms.sqlite3'}"
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return url


@pytest.fixture(scope="module", params=["1", "2"], ids=["sync", "gthread"])
def port(request, sqlite_url, tmp_path_factory) -> Iterator[int]:
    """Run the service under gunicorn from the repo root, as every start does, and stop it after."""
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DATABASE_", "VCAP_", "GUNICORN_", "SAP_", "PROMETHEUS_"))}
    # GUNICORN_THREADS=2 makes gunicorn.conf.py pick the threaded worker, as on Cloud Foundry.
    env.update({"DATABASE_URL": sqlite_url, "GUNICORN_THREADS": request.param, "PYTHONUNBUFFERED": "1"})
    # A file, not a pipe: nobody reads a pipe while the tests run, and a full one would block gunicorn.
    log_path = LOGS[port] = tmp_path_factory.mktemp("gunicorn-log") / "gunicorn.log"
    ACCESS_LOGS[port] = log_path.with_name("access.log")
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}",
                                   "--log-level", "warning", "--graceful-timeout", "2", "--no-control-socket",
                                   "--access-logfile", str(ACCESS_LOGS[port]),
                                   "wsgi:app"],
                                  cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=30)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=STOP_TIMEOUT_S)


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes as one request; return the status, headers (lower-case names) and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def get(port: int, target: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """Send one GET with a request line of target, and the raw header lines given."""
    return exchange(port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode("latin-1"))


def json_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    """Return the JSON body of an error answer, failing if it is HTML or not JSON."""
    assert headers["content-type"] == "application/json", body[:200]
    assert int(headers["content-length"]) == len(body)
    payload = json.loads(body)
    assert set(payload) >= {"error", "message"}
    assert status >= 400
    return payload


def long_mo_query() -> str:
    """Return a SAP DI push whose status text is a 10-segment Unicode SMS, percent-encoded (~6,000 bytes)."""
    text = ("您的订单已送达，感谢您的耐心等待。" * 40)[:670]  # 3 UTF-8 bytes each, 9 encoded
    return ("orderID=77&time=080000&date=02012018&msisdn=%2B4915112345&status="
            + quote(f"'0xDBF3 {text}'", safe=""))


def test_a_long_unicode_vendor_get_reaches_the_app(port):
    query = long_mo_query()
    assert 5_800 < len(query) < LIMIT - 100
    status, headers, body = get(port, "/api/v1/notifications/set?" + query)
    assert status != 414
    assert headers["content-type"] == "application/json"
    # The app answers: stored, or its own JSON 400 naming a field, never gunicorn's page.
    assert status == 200 or (status == 400 and "field" in json.loads(body)), body[:300]


def test_a_request_line_over_the_limit_is_a_json_414_naming_the_field_and_the_limit(port):
    target = "/api/v1/notifications/set?status=" + "x" * LIMIT
    status, headers, body = get(port, target)
    assert status == 414
    payload = json_error(status, headers, body)
    assert payload["error"] == "uri_too_long"
    assert payload["field"] == "request line"
    assert str(LIMIT) in payload["message"]


def test_a_malformed_request_line_is_a_json_400(port):
    status, headers, body = exchange(port, b"GET /health\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 400
    payload = json_error(status, headers, body)
    assert payload["field"] == "request line"
    assert b"<html" not in body


def test_an_invalid_http_version_is_a_json_400_naming_it(port):
    status, headers, body = exchange(port, b"GET /health HTTP/9.x\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 400
    assert json_error(status, headers, body)["field"] == "HTTP version"


def test_too_many_headers_is_a_json_431(port):
    many = "".join(f"X-Extra-{n}: {n}\r\n" for n in range(150))  # gunicorn allows 100 fields
    status, headers, body = get(port, "/health", many)
    assert status == 431
    payload = json_error(status, headers, body)
    assert payload["field"] == "headers"
    assert payload["error"] == "request_header_fields_too_large"


def test_a_header_over_the_field_size_limit_is_a_json_431(port):
    status, headers, body = get(port, "/health", f"X-Big: {'y' * 9000}\r\n")
    assert status == 431
    assert json_error(status, headers, body)["field"] == "headers"


def test_the_worker_class_follows_gunicorn_threads():
    env = {**os.environ, "GUNICORN_THREADS": "4"}
    printed = subprocess.run([str(VENV_BIN / "gunicorn"), "--print-config", "--threads", "4", "wsgi:app"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    settings = {name.strip(): value.strip() for name, _, value in
                (line.partition(" = ") for line in printed.splitlines())}
    assert settings["worker_class"] == "gunicorn_workers.ThreadJsonWorker"
    assert settings["limit_request_line"] == str(LIMIT)


@pytest.mark.parametrize("threads", ["abc", "0", "-2", "1.5"])
def test_gunicorn_threads_that_are_not_a_count_stop_the_start_with_one_line_naming_it(threads):
    env = {**os.environ, "GUNICORN_THREADS": threads}
    started = subprocess.run([str(VENV_BIN / "gunicorn"), "--print-config", "wsgi:app"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [
        f"GUNICORN_THREADS must be a whole number of at least 1, not '{threads}'"]


@pytest.mark.parametrize("target", [
    # A space the vendor did not encode ends the request line early: the rest reads as the HTTP version.
    "/vendors/genesys/inbound-messages?message_id=m1&message=call me on +4915198765432 please",
    "/api/v1/notifications/set?orderID=o9&msisdn=+4915112345678\x01&status=x",
])
def test_a_refused_request_line_is_logged_without_its_numbers_or_text(port, target):
    status, headers, body = get(port, target)
    assert status == 400
    json_error(status, headers, body)
    log = LOGS[port].read_text(errors="replace")
    assert "Invalid request from ip=127.0.0.1" in log
    assert "4915198765432" not in log and "4915112345678" not in log and "please" not in log


def test_gunicorns_own_log_lines_are_json_objects_too(port):
    status, _, _ = exchange(port, b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 400
    lines = [json.loads(line) for line in LOGS[port].read_text(errors="replace").splitlines() if line.strip()]
    rejections = [line for line in lines if line["name"] == "gunicorn.error"]
    assert rejections and all(line["level"] == "WARNING" and "time" in line for line in rejections)


@pytest.mark.parametrize("header", ["X-Request-Id: req-access-7\r\n", "X-Vcap-Request-Id: vcap-access-8\r\n", ""])
def test_the_access_line_carries_the_request_id_of_the_app_log(port, header):
    status, headers, _ = get(port, "/health", header)
    assert status == 200
    request_id = headers["x-request-id"]  # the header's, else the one generated for the app's log lines
    assert request_id == (header.partition(": ")[2].strip() or request_id)
    lines = ACCESS_LOGS[port].read_text(errors="replace").splitlines()
    assert lines[-1].startswith('127.0.0.1 "GET /health" 200 ') and lines[-1].endswith(f" {request_id}")
