"""Local fakes of the service's HTTP peers for the benchmarks, in one threaded server process.

- POST /genesys/send: answers `result_code=0` after --genesys-delay-ms (Genesys MT send);
- POST /oauth/token: a client-credentials token (partner OAuth for Emarsys callbacks);
- POST /emarsys/clients/<id>/<collection>: 202, counting the items of the batch;
- GET /jwks: the JWKS given with --jwks-file (Emarsys's identity service);
- GET /_stats: per endpoint, requests, items, and the first and last request time.

Run: python -m bench.fakes --port 9000 [--genesys-delay-ms 20] [--jwks-file jwks.json]
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Stats:
    """Thread-safe counters per endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, dict[str, Any]] = {}

    def record(self, endpoint: str, items: int = 1) -> None:
        """Count one request and its items."""
        now = time.time()
        with self._lock:
            entry = self._endpoints.setdefault(endpoint, {"requests": 0, "items": 0, "first": now, "last": now})
            entry["requests"] += 1
            entry["items"] += items
            entry["last"] = now

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Return a copy of every counter."""
        with self._lock:
            return {name: dict(entry) for name, entry in self._endpoints.items()}


class FakeHandler(BaseHTTPRequestHandler):
    """Answer like the real peers, as fast as they would (Genesys: after its delay)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the service's pooled sessions expect
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms), so a "20 ms" answer took ~64 ms.
    disable_nagle_algorithm = True
    stats: Stats
    genesys_delay: float
    jwks: bytes

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Serve the JWKS and the stats."""
        if self.path.startswith("/jwks"):
            self.stats.record("jwks")
            self._answer(200, self.jwks, "application/json")
        elif self.path.startswith("/_stats"):
            self._answer(200, json.dumps(self.stats.snapshot()).encode(), "application/json")
        else:
            self._answer(404, b"{}", "application/json")

    def do_POST(self) -> None:  # noqa: N802
        """Serve Genesys sends, tokens and Emarsys callbacks."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/genesys/"):
            time.sleep(self.genesys_delay)
            self.stats.record("genesys")
            self._answer(200, b"result_code=0", "text/plain")
        elif self.path.startswith("/oauth/token"):
            self.stats.record("token")
            token = {"access_token": "bench-token", "token_type": "bearer", "expires_in": 3600}
            self._answer(200, json.dumps(token).encode(), "application/json")
        elif self.path.startswith("/emarsys/"):
            collection = self.path.rstrip("/").rsplit("/", 1)[-1]
            self.stats.record(f"emarsys_{collection}", items=len(json.loads(body).get(collection, [])))
            self._answer(202, b"", "application/json")
        else:
            self._answer(404, b"{}", "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Log nothing: a line per request would cost more than the answer."""


def main() -> None:
    """Serve the fakes until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--genesys-delay-ms", type=float, default=20.0)
    parser.add_argument("--jwks-file", type=Path)
    args = parser.parse_args()
    FakeHandler.stats = Stats()
    FakeHandler.genesys_delay = args.genesys_delay_ms / 1000
    FakeHandler.jwks = args.jwks_file.read_bytes() if args.jwks_file else b'{"keys": []}'
    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer(("127.0.0.1", args.port), FakeHandler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
