"""A loopback HTTP server that trickles its answers a byte at a time, each byte within any read timeout."""
from __future__ import annotations

import socket
import threading
import time
from typing import BinaryIO


def json_answer(body: bytes, *, trickle: str = "body") -> list[bytes]:
    """Return a 200 JSON answer as pieces: the first is sent at once, the rest a byte at a time.

    trickle is "body" (the head comes at once) or "head" (a header line comes slowly), or "none".
    """
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    if trickle == "head":
        return [head, b"X-Slow: " + b"y" * 200 + b"\r\n\r\n" + body]
    if trickle == "body":
        return [head + b"\r\n", body]
    return [head + b"\r\n" + body]


def serve_trickling(answers: list[list[bytes]], path: str = "/oauth2/certs", gap: float = 0.05) -> str:
    """Answer requests on one kept-alive loopback connection with these answers in turn; return the URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_all() -> None:
        connection, _ = listener.accept()
        with connection, listener, connection.makefile("rb") as requests_in:
            for first, *rest in answers:
                _read_request_head(requests_in)
                try:
                    connection.sendall(first)
                    for byte in b"".join(rest):
                        time.sleep(gap)
                        connection.sendall(bytes([byte]))
                except OSError:
                    return  # the client shut the connection: what the deadline is for

    threading.Thread(target=answer_all, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}{path}"


def _read_request_head(requests_in: BinaryIO) -> None:
    # A JWKS fetch is a GET: no body to read after the head. b"" is the client gone.
    while requests_in.readline() not in (b"\r\n", b""):
        pass
