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


def serve_trickling(answers: list[list[bytes]], gap: float = 0.3, path: str = "/") -> str:
    """Answer requests on one kept-alive loopback connection with these answers in turn; return the URL.

    Each answer is a list of pieces: the first is sent at once, every later byte after `gap`.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_all() -> None:
        """Read each request and trickle its answer, until the client goes away."""
        connection, _ = listener.accept()
        with connection, listener, connection.makefile("rb") as requests_in:
            for first, *rest in answers:
                read_request(requests_in)
                try:
                    connection.sendall(first)
                    for byte in b"".join(rest):
                        time.sleep(gap)
                        connection.sendall(bytes([byte]))
                except OSError:
                    return  # the client shut the connection: what the deadline is for

    threading.Thread(target=answer_all, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}{path}"


def read_request(requests_in: BinaryIO) -> None:
    """Read one HTTP request, its head and its Content-Length body, whatever the TCP segments."""
    length = 0
    for line in iter(requests_in.readline, b"\r\n"):
        if not line:
            return  # the client went away
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    requests_in.read(length)
