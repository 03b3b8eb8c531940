"""Ingest benchmark: vendor receipts at saturation against a hello-world under the same gunicorn.

A mix of Genesys receipts (form POST) and SAP Digital Interconnect notifications (GET),
each for a new message, one in five a bounce, is driven by wrk for --seconds. Side by side,
under the same gunicorn configuration and wrk settings, the machine's two ceilings get the same
time: bench/hello_wsgi.py, and the same receipts against bench/bare_insert_wsgi.py (one raw
psycopg2 INSERT per request). The three loads alternate in ROUNDS rounds. Afterwards every
receipt answered 2xx must be in raw_events.

Run: python -m bench.ingest [--seconds 20] [--connections 8]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.common import (DATABASE_NAME, GUNICORN_WORKERS, BenchDatabase, Check, Result, WrkRun, app_env,
                          find_pg_bin, measure_cpu, median, report, run_wrk, running, start_gunicorn,
                          wait_until_answers)

WARM_UP_SECONDS = 2
# Each app's seconds are split into rounds that alternate the three apps: a slow spell of the
# shared machine then hits all three alike, not whichever happened to run during it.
ROUNDS = 4
PG_ALONE_SECONDS = 5
PG_ALONE_FIGURE = "PostgreSQL alone: single-row inserts/s (pgbench, one client per gunicorn worker)"
PG_ALONE_TABLE = ("CREATE TABLE IF NOT EXISTS bench_pg_alone "
                  "(id bigserial PRIMARY KEY, message_id text UNIQUE, params json, received_at timestamp)")
PG_ALONE_INSERT = ("INSERT INTO bench_pg_alone (message_id, params, received_at) "
                   "VALUES (gen_random_uuid()::text, '{}', now()) ON CONFLICT (message_id) DO NOTHING;")
APPS = (("ingest", "wsgi:app", "ingest.lua"), ("hello-world", "bench.hello_wsgi:app", "hello.lua"),
        ("bare insert", "bench.bare_insert_wsgi:app", "ingest.lua"))
RATIO_TARGET = 0.40
P99_TARGET_MS = 50.0


@dataclass(frozen=True)
class Measured:
    """One app's load: wrk's summary and the CPU ms per request each role spent on it."""

    run: WrkRun
    cpu: dict[str, float]


def measure_side_by_side(database: BenchDatabase, seconds: float, connections: int) -> tuple[dict[str, Measured], int]:
    """Drive the service and both ceilings in alternating rounds; return each one's load and the receipts stored."""
    servers = [(name, *start_gunicorn(name.replace(" ", "-"), target, app_env(database.url)), script)
               for name, target, script in APPS]
    with ExitStack() as stack:
        for _, process, _, _ in servers:
            stack.enter_context(running(process))
        wait_until_answers(servers[0][2], "/health")
        for _, _, port, script in servers:
            run_wrk(f"http://127.0.0.1:{port}", script, WARM_UP_SECONDS, connections, script_args=["warm"])
        before = database.scalar("SELECT count(*) FROM raw_events")
        rounds: dict[str, list[tuple[WrkRun, dict[str, float]]]] = {name: [] for name, _, _ in APPS}
        for _ in range(ROUNDS):
            for name, _, port, script in servers:
                rounds[name].append(measure_cpu(lambda: run_wrk(
                    f"http://127.0.0.1:{port}", script, seconds / ROUNDS, connections,
                    script_args=[uuid.uuid4().hex[:8]])))
        # Requests in flight when wrk closed its connections may still commit.
        time.sleep(1.0)
        stored = database.scalar("SELECT count(*) FROM raw_events") - before
    return {name: combined(loads) for name, loads in rounds.items()}, stored


def measure_postgres_alone(database: BenchDatabase, seconds: float, clients: int) -> float:
    """Return the single-row inserts/s PostgreSQL commits alone (pgbench, no HTTP, no Python)."""
    script = Path(tempfile.mkdtemp(prefix="sms-status-pgbench-")) / "insert.sql"
    script.write_text(PG_ALONE_INSERT + "\n")
    connection = database.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(PG_ALONE_TABLE)
    finally:
        connection.close()
    done = subprocess.run(
        [str(find_pg_bin() / "pgbench"), "-n", "-c", str(clients), "-j", "2", "-T", f"{seconds:g}", "-f", str(script),
         "-h", "127.0.0.1", "-p", str(database.server.port), "-U", "test", DATABASE_NAME],
        capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed:\n{done.stdout[-1000:]}\n{done.stderr[-1000:]}")
    return float(match.group(1))


def combined(loads: list[tuple[WrkRun, dict[str, float]]]) -> Measured:
    """Add up one app's rounds: counts and times summed, p50 the median round's, p99 and max the worst."""
    runs = [run for run, _ in loads]
    requests = sum(run.requests for run in runs) or 1
    run = WrkRun(requests=sum(run.requests for run in runs), non_2xx=sum(run.non_2xx for run in runs),
                 socket_errors=sum(run.socket_errors for run in runs), seconds=sum(run.seconds for run in runs),
                 p50_ms=median([run.p50_ms for run in runs]), p90_ms=max(run.p90_ms for run in runs),
                 p99_ms=max(run.p99_ms for run in runs), max_ms=max(run.max_ms for run in runs))
    roles = {role for _, cpu in loads for role in cpu}
    cpu = {role: round(sum(cpu.get(role, 0.0) * run.requests for run, cpu in loads) / requests, 3)
           for role in roles}
    return Measured(run, cpu)


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
    settings = {"seconds": seconds, "rounds": ROUNDS, "connections": connections,
                "gunicorn": f"sync workers, -w {GUNICORN_WORKERS}",
                "mix": "Genesys POST / SAP DI GET alternately, 20% bounces, each a new message"}
    return Result("ingest", f"Ingest: receipts at saturation ({seconds:g} s, {connections} connections)",
                  figures, checks, settings)


def _ratio(run: WrkRun, reference: WrkRun) -> float:
    return round(run.per_second / reference.per_second, 3) if reference.per_second else 0.0


def main() -> None:
    """Start PostgreSQL, measure the service and both ceilings side by side, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=2 * GUNICORN_WORKERS)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        loads, stored = measure_side_by_side(database, args.seconds, args.connections)
        postgres_alone = measure_postgres_alone(database, PG_ALONE_SECONDS, GUNICORN_WORKERS)
    finally:
        database.stop()
    result = build_result(loads["ingest"], stored, loads["hello-world"], loads["bare insert"], args.seconds,
                          args.connections)
    result.figures[PG_ALONE_FIGURE] = postgres_alone
    report(result)


if __name__ == "__main__":
    main()
