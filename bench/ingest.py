"""Ingest benchmark: vendor receipts at saturation against a hello-world under the same gunicorn.

A mix of Genesys receipts (form POST) and SAP Digital Interconnect notifications (GET),
each for a new message, one in five a bounce, is driven by wrk for --seconds. The same
wrk settings then measure bench/hello_wsgi.py under the same gunicorn configuration.
Afterwards every receipt answered 2xx must be in raw_events.

Run: python -m bench.ingest [--seconds 20] [--connections 8]
"""
from __future__ import annotations

import argparse
import time
import uuid

from bench.common import (GUNICORN_WORKERS, BenchDatabase, Check, Result, WrkRun, app_env, report, run_wrk,
                          running, start_gunicorn, wait_until_answers)

WARM_UP_SECONDS = 2
RATIO_TARGET = 0.40
P99_TARGET_MS = 50.0


def measure_ingest(database: BenchDatabase, seconds: float, connections: int) -> tuple[WrkRun, int]:
    """Drive receipts at the service; return wrk's summary and how many raw events it stored."""
    process, port = start_gunicorn("ingest-app", "wsgi:app", app_env(database.url))
    with running(process):
        wait_until_answers(port, "/health")
        run_wrk(f"http://127.0.0.1:{port}", "ingest.lua", WARM_UP_SECONDS, connections, script_args=["warm"])
        before = database.scalar("SELECT count(*) FROM raw_events")
        run = run_wrk(f"http://127.0.0.1:{port}", "ingest.lua", seconds, connections,
                      script_args=[uuid.uuid4().hex[:8]])
        # Requests in flight when wrk closed its connections may still commit.
        time.sleep(1.0)
        stored = database.scalar("SELECT count(*) FROM raw_events") - before
    return run, stored


def measure_hello(database: BenchDatabase, seconds: float, connections: int) -> WrkRun:
    """Drive the hello-world app under the same gunicorn settings and return wrk's summary."""
    process, port = start_gunicorn("hello-app", "bench.hello_wsgi:app", app_env(database.url))
    with running(process):
        wait_until_answers(port, "/")
        run_wrk(f"http://127.0.0.1:{port}", "hello.lua", WARM_UP_SECONDS, connections)
        return run_wrk(f"http://127.0.0.1:{port}", "hello.lua", seconds, connections)


def build_result(ingest: WrkRun, stored: int, hello: WrkRun, seconds: float, connections: int) -> Result:
    """Turn the two runs into figures and checks."""
    ratio = ingest.per_second / hello.per_second if hello.per_second else 0.0
    missing = max(0, ingest.acknowledged - stored)
    figures = {
        "receipts/s": ingest.per_second, "receipts answered": ingest.requests,
        "receipts answered 2xx": ingest.acknowledged, "receipts answered non-2xx": ingest.non_2xx,
        "socket errors/timeouts": ingest.socket_errors, "raw events stored": stored,
        "ingest p50 ms": ingest.p50_ms, "ingest p90 ms": ingest.p90_ms, "ingest max ms": ingest.max_ms,
        "hello-world requests/s": hello.per_second, "hello-world p50 ms": hello.p50_ms,
        "hello-world p99 ms": hello.p99_ms,
    }
    checks = [
        Check("ratio ingest/hello-world", round(ratio, 3), f">= {RATIO_TARGET}", ratio >= RATIO_TARGET),
        Check("ingest p99 ms", ingest.p99_ms, f"< {P99_TARGET_MS:g}", ingest.p99_ms < P99_TARGET_MS, "ms"),
        Check("acknowledged receipts missing from the database", missing, "= 0", missing == 0),
    ]
    settings = {"seconds": seconds, "connections": connections, "gunicorn": f"-k sync -w {GUNICORN_WORKERS}",
                "mix": "Genesys POST / SAP DI GET alternately, 20% bounces, each a new message"}
    return Result("ingest", f"Ingest: receipts at saturation ({seconds:g} s, {connections} connections)",
                  figures, checks, settings)


def main() -> None:
    """Start PostgreSQL, measure ingest then hello-world, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=2 * GUNICORN_WORKERS)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        ingest, stored = measure_ingest(database, args.seconds, args.connections)
        hello = measure_hello(database, args.seconds, args.connections)
    finally:
        database.stop()
    report(build_result(ingest, stored, hello, args.seconds, args.connections))


if __name__ == "__main__":
    main()
