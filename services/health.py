"""Readiness checks."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from flask import copy_current_request_context, has_request_context
from sqlalchemy import text

from models import db

# A small fixed pool: a hung check must not spawn a new thread per probe.
_probe_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ready-probe")
# And a bounded queue: /ready is open, and while the database hangs every probe would wait there.
MAX_PROBES_IN_FLIGHT = 4
_probe_slots = threading.BoundedSemaphore(MAX_PROBES_IN_FLIGHT)


def database_ready(timeout_seconds: float) -> str | None:
    """Return None when the database answers `SELECT 1` in time, else the reason it does not."""
    probe = _select_one
    if has_request_context():
        probe = copy_current_request_context(_select_one)
    if not _probe_slots.acquire(blocking=False):
        return "database did not answer the checks still running"
    future = _probe_pool.submit(probe)
    future.add_done_callback(lambda _: _probe_slots.release())
    try:
        future.result(timeout=timeout_seconds)
    except FutureTimeout:
        return f"database did not answer within {timeout_seconds:g} s"
    except Exception as exc:  # Any driver error means "not ready"; its class tells the operator why.
        return f"database error: {type(exc).__name__}"
    return None


def _select_one() -> None:
    with db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
