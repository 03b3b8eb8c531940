"""Fake peers for the drills, served from a thread of the drill itself so that it can read every id.

Unlike bench/fakes.py (which only counts), these remember what they received:
- POST /genesys/send: `result_code=0` after a delay; counts each `message_id`;
- POST /emarsys/clients/<id>/<collection>: per `mode` it answers 202 ("up"), 503
  ("unavailable") or nothing at all ("timeout": it holds the request past the caller's
  timeout and drops it); it records every item, and which of them it acknowledged;
- POST /oauth/token: a client-credentials token; GET /jwks: the given JWKS.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

UP, UNAVAILABLE, TIMEOUT = "up", "unavailable", "timeout"


def item_key(item: dict[str, Any]) -> str:
    """Return what identifies one forwarded report at the fake: message id first, then its event."""
    details = item.get("details") or {}
    return "|".join(str(part) for part in (item.get("emarsysMessageId") or item.get("messageId"),
                                           item.get("status"), details.get("providerCode"),
                                           item.get("receivedAt")))


@dataclass
class PeerRecord:
    """What the fakes received, guarded by one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    genesys_sends: Counter[str] = field(default_factory=Counter)
    # Items per key, by Emarsys's answer: acknowledged (202), refused (503), dropped (timeout).
    emarsys_acknowledged: Counter[str] = field(default_factory=Counter)
    emarsys_refused: Counter[str] = field(default_factory=Counter)
    emarsys_dropped: Counter[str] = field(default_factory=Counter)
    # Items that arrived although an earlier call with them had been acknowledged.
    resent_after_acknowledgement: Counter[str] = field(default_factory=Counter)
    emarsys_calls: Counter[str] = field(default_factory=Counter)
    acknowledged_at: list[float] = field(default_factory=list)

    def record_emarsys(self, mode: str, items: list[dict[str, Any]]) -> None:
        """Count one Emarsys call and its items under the answer it gets."""
        keys = [item_key(item) for item in items]
        with self.lock:
            self.emarsys_calls[mode] += 1
            for key in keys:
                if self.emarsys_acknowledged[key]:
                    self.resent_after_acknowledgement[key] += 1
            target = {UP: self.emarsys_acknowledged, UNAVAILABLE: self.emarsys_refused,
                      TIMEOUT: self.emarsys_dropped}[mode]
            target.update(keys)
            if mode == UP:
                self.acknowledged_at.extend([time.monotonic()] * len(keys))


class PeerHandler(BaseHTTPRequestHandler):
    """Answer as the peers would, and record what arrived."""

    protocol_version = "HTTP/1.1"
    server: FakePeersServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Serve the JWKS."""
        if self.path.startswith("/jwks"):
            self._answer(200, json.dumps(self.server.jwks).encode())
        else:
            self._answer(404, b"{}")

    def do_POST(self) -> None:  # noqa: N802
        """Serve Genesys sends, tokens and Emarsys callbacks."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/genesys/"):
            self._genesys(body)
        elif self.path.startswith("/oauth/token"):
            token = {"access_token": "drill-token", "token_type": "bearer", "expires_in": 3600}
            self._answer(200, json.dumps(token).encode())
        elif self.path.startswith("/emarsys/"):
            self._emarsys(body)
        else:
            self._answer(404, b"{}")

    def _genesys(self, body: bytes) -> None:
        time.sleep(self.server.genesys_delay)
        message_id = parse_qs(body.decode()).get("message_id", [""])[0]
        with self.server.record.lock:
            self.server.record.genesys_sends[message_id] += 1
        self._answer(200, b"result_code=0", "text/plain")

    def _emarsys(self, body: bytes) -> None:
        collection = self.path.rstrip("/").rsplit("/", 1)[-1]
        items = json.loads(body).get(collection, [])
        mode = self.server.mode
        self.server.record.record_emarsys(mode, items)
        if mode == TIMEOUT:
            # Never answer: the caller's read timeout fires first; then drop the connection.
            time.sleep(self.server.hang_seconds)
            self.close_connection = True
            return
        self._answer(202 if mode == UP else 503, b"" if mode == UP else b'{"error": "unavailable"}')

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Log nothing: the record says what arrived."""


class FakePeersServer(ThreadingHTTPServer):
    """The fakes' server: its mode and record are shared by every request thread."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, jwks: dict[str, Any], genesys_delay: float, hang_seconds: float):
        super().__init__(("127.0.0.1", 0), PeerHandler)
        self.jwks, self.genesys_delay, self.hang_seconds = jwks, genesys_delay, hang_seconds
        self.mode = UP
        self.record = PeerRecord()

    @property
    def url(self) -> str:
        """Return the base URL of the fakes."""
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def fake_peers(jwks: dict[str, Any] | None = None, genesys_delay: float = 0.02,
               hang_seconds: float = 5.0) -> Iterator[FakePeersServer]:
    """Serve the fakes from a background thread for the duration of the block."""
    server = FakePeersServer(jwks or {"keys": []}, genesys_delay, hang_seconds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def partner_settings(fakes_url: str) -> dict[str, str]:
    """Return the worker's partner OAuth and Emarsys API settings pointing at the fakes."""
    return {"PARTNER_OAUTH_TOKEN_URL": f"{fakes_url}/oauth/token", "PARTNER_OAUTH_CLIENT_ID": "drill-partner",
            "PARTNER_OAUTH_CLIENT_SECRET": "drill-partner-secret", "EMARSYS_API_BASE_URL": f"{fakes_url}/emarsys"}
