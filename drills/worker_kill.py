"""Drill: a web worker killed with SIGKILL under load.

Genesys receipts, each for a new message id, are driven at the service under gunicorn
(-w 4, gunicorn.conf.py's sync worker) from 8 threads. A request without an answer (connection
reset by the kill, or a 5xx) is retried unchanged until answered. Meanwhile one worker (never the
master) is killed with SIGKILL every few seconds. Afterwards every id answered 2xx must
be in raw_events exactly once, and so must every id that went unanswered first.

Run: python -m drills.worker_kill [--seconds 20] [--kills 4]
"""
from __future__ import annotations

import argparse
import time
import uuid

from bench.common import BenchDatabase, app_env, percentile, running, start_gunicorn, wait_until_answers
from drills.common import (DrillResult, LoadDriver, check, counts_per_id, genesys_receipt, kill_one_worker,
                           report, wait_for_workers)

WORKERS = 4
# No -k: gunicorn.conf.py picks its sync worker, which answers gunicorn's own rejections as JSON.
GUNICORN = f"-w {WORKERS}, gunicorn.conf.py's sync worker"
PATH = "/vendors/genesys/delivery-reports"
COUNT_SQL = "SELECT vendor_message_id, count(*) FROM raw_events WHERE vendor_message_id = ANY(%s) GROUP BY 1"


def drive_and_kill(port: int, master_pid: int, seconds: float, kills: int) -> tuple[LoadDriver, list[int]]:
    """Run the load for `seconds`, killing a worker `kills` times at even intervals."""
    driver = LoadDriver(port, lambda item: genesys_receipt(PATH, item), f"kill-{uuid.uuid4().hex[:6]}").start()
    victims = []
    pause = seconds / (kills + 1)
    for _ in range(kills):
        time.sleep(pause)
        victim = kill_one_worker(master_pid)
        if victim is not None:
            victims.append(victim)
        wait_for_workers(master_pid, WORKERS, timeout=pause)
    time.sleep(pause)
    driver.stop(grace=30)
    return driver, victims


def evaluate(database: BenchDatabase, driver: LoadDriver, victims: list[int], seconds: float) -> DrillResult:
    """Compare what the load driver was told with what the database holds."""
    stored = counts_per_id(database, COUNT_SQL, (f"{item}" for item in driver.acknowledged))
    missing = [item for item in driver.acknowledged if stored[item] == 0]
    duplicated = [item for item in driver.acknowledged if stored[item] > 1]
    retried_and_stored_once = sum(1 for item in driver.retried if stored[item] == 1)
    latencies = [a.millis for a in driver.attempts if a.status is not None and a.status < 300]
    cut_off = sum(1 for a in driver.attempts if a.status is None)
    checks = [
        check("workers killed with SIGKILL", len(victims), ">= 1", victims),
        check("requests cut off by a kill (no answer), then retried", cut_off, ">= 1", cut_off),
        check("acknowledged ids missing from raw_events", len(missing), "= 0", not missing),
        check("acknowledged ids stored more than once", len(duplicated), "= 0", not duplicated),
        check("ids left unanswered after the retries", len(driver.unanswered), "= 0", not driver.unanswered),
        check("ids refused with a 4xx", len(driver.rejected), "= 0", not driver.rejected),
        check("retried ids stored exactly once", retried_and_stored_once, f"= {len(driver.retried)}",
              retried_and_stored_once == len(driver.retried)),
    ]
    figures = {"load seconds": seconds, "ids acknowledged": len(driver.acknowledged),
               "requests sent": len(driver.attempts), "ids retried": len(driver.retried),
               "answers": driver.statuses(), "acknowledged/s": len(driver.acknowledged) / seconds,
               "p50 ms": percentile(latencies, 0.5), "p99 ms": percentile(latencies, 0.99),
               "killed worker pids": victims}
    return DrillResult("worker_kill", "Web worker killed with SIGKILL under load", tried(seconds, len(victims)),
                       checks, figures, {"gunicorn": GUNICORN, "load threads": driver.threads})


def tried(seconds: float, kills: int) -> list[str]:
    """Describe the drill in plain words."""
    return [f"{seconds:g} s of Genesys receipts, each a new message id, from 8 threads at gunicorn {GUNICORN}",
            f"{kills} workers (never the master) killed with SIGKILL at even intervals during the load",
            "no answer or 5xx: the same request retried unchanged until answered (redelivery)",
            "afterwards: raw_events counted per id"]


def main() -> int:
    """Start PostgreSQL and gunicorn, run the drill, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--kills", type=int, default=4)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        process, port = start_gunicorn("drill-worker-kill", "wsgi:app", app_env(database.url), workers=WORKERS)
        with running(process):
            wait_until_answers(port, "/health")
            driver, victims = drive_and_kill(port, process.popen.pid, args.seconds, args.kills)
        return report(evaluate(database, driver, victims, args.seconds))
    finally:
        database.stop()


if __name__ == "__main__":
    raise SystemExit(main())
