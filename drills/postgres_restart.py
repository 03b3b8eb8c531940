"""Drill: PostgreSQL restarted under load.

Genesys receipts, each for a new message id, are driven at the service under gunicorn
(-w 4, gunicorn.conf.py's sync worker); unanswered ones (no answer or 5xx) are retried
unchanged. PostgreSQL is
stopped with `pg_ctl stop -m fast`, left down for some seconds, and started again, while
the service keeps running. During the outage ingest must answer 503 (never 2xx: nothing
was committed) and never take longer than the configured connect timeout; after it, the
service must answer 2xx again without a restart, and every acknowledged id must be stored
exactly once.

Run: python -m drills.postgres_restart [--down-seconds 6]
"""
from __future__ import annotations

import argparse
import time
import uuid

from bench.common import BenchDatabase, app_env, percentile, running, start_gunicorn, wait_until_answers
from drills.common import (DrillResult, LoadDriver, PostgresSwitch, check, counts_per_id, genesys_receipt,
                           report)

WORKERS = 4
PATH = "/vendors/genesys/delivery-reports"
COUNT_SQL = "SELECT vendor_message_id, count(*) FROM raw_events WHERE vendor_message_id = ANY(%s) GROUP BY 1"
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 5000
RECOVERY_BOUND_S = 10.0
BEFORE_S, AFTER_S = 5.0, 8.0


def run_outage(database: BenchDatabase, port: int, down_seconds: float) -> tuple[LoadDriver, dict[str, float]]:
    """Drive load, stop PostgreSQL, wait, start it; return the driver and the outage's moments."""
    driver = LoadDriver(port, lambda item: genesys_receipt(PATH, item), f"pg-{uuid.uuid4().hex[:6]}",
                        retry_pause=0.1, timeout=60).start()
    switch = PostgresSwitch(database.server)
    time.sleep(BEFORE_S)
    moments = {"stop_requested": time.monotonic()}
    switch.stop()
    moments["down"] = time.monotonic()
    time.sleep(down_seconds)
    moments["start_requested"] = time.monotonic()
    switch.start()
    moments["up"] = time.monotonic()
    time.sleep(AFTER_S)
    driver.stop(grace=30)
    return driver, moments


def first_success_after(driver: LoadDriver, moment: float) -> float | None:
    """Return the seconds from `moment` to the first 2xx of a request started after it."""
    successes = [a.ended for a in driver.attempts_between(moment, float("inf"))
                 if a.status is not None and a.status < 300]
    return min(successes) - moment if successes else None


def evaluate(database: BenchDatabase, driver: LoadDriver, moments: dict[str, float],
             down_seconds: float) -> DrillResult:
    """Check the answers during the outage, the recovery, and what the database holds."""
    during = driver.attempts_between(moments["down"], moments["start_requested"])
    acknowledged_during = [a for a in during if a.status is not None and a.status < 300]
    other_than_503 = [a for a in during if a.status != 503]
    slowest_ms = max((a.millis for a in during), default=0.0)
    recovery = first_success_after(driver, moments["up"])
    errors = [a for a in driver.attempts if a.status is not None and a.status >= 500 and a.status != 503]
    stored = counts_per_id(database, COUNT_SQL, driver.acknowledged)
    missing = [item for item in driver.acknowledged if stored[item] == 0]
    duplicated = [item for item in driver.acknowledged if stored[item] > 1]
    bound_ms = CONNECT_TIMEOUT_S * 1000
    checks = [
        check("requests while PostgreSQL was down", len(during), ">= 1", during),
        check("2xx answers while PostgreSQL was down", len(acknowledged_during), "= 0", not acknowledged_during),
        check("answers other than 503 while down", len(other_than_503), "= 0", not other_than_503),
        check("slowest answer while down, ms", slowest_ms, f"< {bound_ms} (connect timeout)", slowest_ms < bound_ms),
        check("first 2xx after PostgreSQL is back, s", recovery if recovery is not None else "never",
              f"<= {RECOVERY_BOUND_S:g}", recovery is not None and recovery <= RECOVERY_BOUND_S),
        check("5xx other than 503 in the whole run", len(errors), "= 0", not errors),
        check("acknowledged ids missing from raw_events", len(missing), "= 0", not missing),
        check("acknowledged ids stored more than once", len(duplicated), "= 0", not duplicated),
        check("ids left unanswered after the retries", len(driver.unanswered), "= 0", not driver.unanswered),
    ]
    return DrillResult("postgres_restart", "PostgreSQL restarted under load", tried(down_seconds), checks,
                       figures(driver, during, moments), settings())


def figures(driver: LoadDriver, during: list, moments: dict[str, float]) -> dict:
    """Return the drill's figures: the outage, the answers in it, and the whole run."""
    latencies = [a.millis for a in during]
    return {"pg_ctl stop -m fast took s": moments["down"] - moments["stop_requested"],
            "PostgreSQL down s": moments["start_requested"] - moments["down"],
            "pg_ctl start took s": moments["up"] - moments["start_requested"],
            "requests while down": len(during), "answers while down": _statuses(during),
            "p50 ms while down": percentile(latencies, 0.5), "p99 ms while down": percentile(latencies, 0.99),
            "ids acknowledged": len(driver.acknowledged), "ids retried": len(driver.retried),
            "answers in the whole run": driver.statuses()}


def _statuses(attempts: list) -> dict[str, int]:
    counted: dict[str, int] = {}
    for attempt in attempts:
        key = "none" if attempt.status is None else str(attempt.status)
        counted[key] = counted.get(key, 0) + 1
    return counted


def settings() -> dict:
    """Return the service settings the drill runs with."""
    return {"gunicorn": f"-w {WORKERS}, gunicorn.conf.py's sync worker",
            "DATABASE_CONNECT_TIMEOUT": CONNECT_TIMEOUT_S,
            "DATABASE_STATEMENT_TIMEOUT_MS": STATEMENT_TIMEOUT_MS, "load threads": 8}


def tried(down_seconds: float) -> list[str]:
    """Describe the drill in plain words."""
    return [f"Genesys receipts from 8 threads; after {BEFORE_S:g} s `pg_ctl stop -m fast`, "
            f"{down_seconds:g} s down, `pg_ctl start`, {AFTER_S:g} s more load",
            "the service kept running throughout (no restart of gunicorn or its workers)",
            "no answer or 5xx: the same request retried unchanged until answered",
            "afterwards: raw_events counted per acknowledged id"]


def main() -> int:
    """Start PostgreSQL and gunicorn, run the drill, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--down-seconds", type=float, default=6)
    args = parser.parse_args()
    database = BenchDatabase()
    env = app_env(database.url, DATABASE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT_S),
                  DATABASE_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS))
    database.start(env)
    try:
        process, port = start_gunicorn("drill-postgres-restart", "wsgi:app", env, workers=WORKERS)
        with running(process):
            wait_until_answers(port, "/health")
            driver, moments = run_outage(database, port, args.down_seconds)
        return report(evaluate(database, driver, moments, args.down_seconds))
    finally:
        database.stop()


if __name__ == "__main__":
    raise SystemExit(main())
