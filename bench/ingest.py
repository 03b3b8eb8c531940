"""Ingest benchmark: vendor receipts at saturation against a hello-world under the same gunicorn.

A mix of Genesys receipts (form POST) and SAP Digital Interconnect notifications (GET),
each for a new message, one in five a bounce, is driven by wrk for --seconds. The same
wrk settings then measure bench/hello_wsgi.py under the same gunicorn configuration, and the
same receipts against bench/bare_insert_wsgi.py (one raw psycopg2 INSERT per request): the
two ceilings of this machine, side by side with the service.
Afterwards every receipt answered 2xx must be in raw_events.

Run: python -m bench.ingest [--seconds 20] [--connections 8]
"""
from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass

from bench.common import (GUNICORN_WORKERS, BenchDatabase, Check, Result, WrkRun, app_env, measure_cpu, report,
                          run_wrk, running, start_gunicorn, wait_until_answers)

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
        run, cpu = measure_cpu(lambda: run_wrk(f"http://127.0.0.1:{port}", "ingest.lua", seconds, connections,
                                               script_args=[uuid.uuid4().hex[:8]]))
        # Requests in flight when wrk closed its connections may still commit.
        time.sleep(1.0)
        stored = database.scalar("SELECT count(*) FROM raw_events") - before
    return Measured(run, cpu), stored


@dataclass(frozen=True)
class Measured:
    """One load's wrk summary and the CPU ms per request each role spent on it."""

    run: WrkRun
    cpu: dict[str, float]


def measure_ceiling(database: BenchDatabase, wsgi_target: str, script: str, seconds: float,
                    connections: int) -> Measured:
    """Drive a ceiling app (hello-world or bare insert) under the same gunicorn settings."""
    process, port = start_gunicorn(wsgi_target.split(":")[0].rsplit(".", 1)[-1], wsgi_target,
                                   app_env(database.url))
    with running(process):
        run_wrk(f"http://127.0.0.1:{port}", script, WARM_UP_SECONDS, connections, script_args=["warm"])
        return Measured(*measure_cpu(lambda: run_wrk(f"http://127.0.0.1:{port}", script, seconds, connections,
                                                     script_args=[uuid.uuid4().hex[:8]])))


def cpu_figures(label: str, measured: Measured) -> dict[str, float]:
    """Return the CPU ms per request of each role, and their sum, as figures."""
    figures = {f"{label} CPU ms per request: {role}": value for role, value in sorted(measured.cpu.items())}
    figures[f"{label} CPU ms per request: all"] = round(sum(measured.cpu.values()), 3)
    return figures


def build_result(ingest: Measured, stored: int, hello: Measured, bare: Measured, seconds: float,
                 connections: int) -> Result:
    """Turn the three runs into figures and checks."""
    ratio = ingest.run.per_second / hello.run.per_second if hello.run.per_second else 0.0
    missing = max(0, ingest.run.acknowledged - stored)
    figures = {
        "receipts/s": ingest.run.per_second, "receipts answered": ingest.run.requests,
        "receipts answered 2xx": ingest.run.acknowledged, "receipts answered non-2xx": ingest.run.non_2xx,
        "socket errors/timeouts": ingest.run.socket_errors, "raw events stored": stored,
        "ingest p50 ms": ingest.run.p50_ms, "ingest p90 ms": ingest.run.p90_ms, "ingest max ms": ingest.run.max_ms,
        "hello-world requests/s": hello.run.per_second, "hello-world p50 ms": hello.run.p50_ms,
        "hello-world p99 ms": hello.run.p99_ms,
        "bare insert requests/s": bare.run.per_second, "bare insert p50 ms": bare.run.p50_ms,
        "bare insert answered non-2xx": bare.run.non_2xx + bare.run.socket_errors,
        "ratio bare insert/hello-world": _ratio(bare.run, hello.run),
        "ratio ingest/bare insert": _ratio(ingest.run, bare.run),
        **cpu_figures("ingest", ingest), **cpu_figures("bare insert", bare), **cpu_figures("hello-world", hello),
    }
    checks = [
        Check("ratio ingest/hello-world", round(ratio, 3), f">= {RATIO_TARGET}", ratio >= RATIO_TARGET),
        Check("ingest p99 ms", ingest.run.p99_ms, f"< {P99_TARGET_MS:g}", ingest.run.p99_ms < P99_TARGET_MS, "ms"),
        Check("acknowledged receipts missing from the database", missing, "= 0", missing == 0),
    ]
    settings = {"seconds": seconds, "connections": connections, "gunicorn": f"-k sync -w {GUNICORN_WORKERS}",
                "mix": "Genesys POST / SAP DI GET alternately, 20% bounces, each a new message"}
    return Result("ingest", f"Ingest: receipts at saturation ({seconds:g} s, {connections} connections)",
                  figures, checks, settings)


def _ratio(run: WrkRun, reference: WrkRun) -> float:
    return round(run.per_second / reference.per_second, 3) if reference.per_second else 0.0


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
        hello = measure_ceiling(database, "bench.hello_wsgi:app", "hello.lua", args.seconds, args.connections)
        bare = measure_ceiling(database, "bench.bare_insert_wsgi:app", "ingest.lua", args.seconds, args.connections)
    finally:
        database.stop()
    report(build_result(ingest, stored, hello, bare, args.seconds, args.connections))


if __name__ == "__main__":
    main()
