"""Forwarding benchmark: 50,000 pending outbox reports forwarded to a fake Emarsys.

The reports (delivery reports of one Emarsys client, each for its own message) are
bulk-inserted into the outbox with SQL; then `flask --app app worker` runs with the
partner OAuth settings pointing at the fake token service and the fake Emarsys API, in
batches of FORWARD_BATCH_SIZE (1000), until no item is pending or leased. The rate counts
from the first batch the fake receives to the moment the outbox is drained. Every report
must reach the fake exactly once.

Run: python -m bench.forwarding [--reports 50000]
"""
from __future__ import annotations

import argparse
import time
import uuid

from bench.common import (BIN, BenchDatabase, Check, Result, app_env, fake_servers, fake_stats, report, running,
                          start_process, wait_for)

RATE_TARGET = 5000.0
BATCH_SIZE = 1000
COLLECTION = "deliveryReports"
# The worker is stopped after this long, drained or not, so `make bench` stays bounded.
TIME_BUDGET_SECONDS = 90.0

# The forwarder drops the reports of a client that no longer exists, so the client is stored too.
CLIENT_SQL = """
INSERT INTO clients (id, vendor, settings, secrets, callback_token, created_at, updated_at)
VALUES (%(client_id)s, 'genesys', '{}', 'never opened', md5(%(client_id)s), now(), now())
"""
OUTBOX_SQL = """
INSERT INTO outbox (client_id, kind, message_key, payload, event_at, state, attempts, next_attempt_at, created_at)
SELECT %(client_id)s, 'delivery_report', 'bench-' || g,
       json_build_object('emarsysMessageId', 'bench-' || g, 'receivedAt', '2026-01-01T00:00:00Z',
                         'status', 'DELIVERED',
                         'details', json_build_object('providerStatus', 'delivered', 'providerCode', '2:0'),
                         'providerMessageIds', json_build_array('g-bench-' || g)),
       now() AT TIME ZONE 'utc' - interval '1 minute' + g * interval '1 millisecond', 'pending', 0,
       now() AT TIME ZONE 'utc' - interval '2 seconds', now() AT TIME ZONE 'utc' - interval '2 seconds'
FROM generate_series(1, %(count)s) AS g
"""
OPEN_SQL = "SELECT count(*) FROM outbox WHERE state IN ('pending', 'leased')"
FINISHED_SQL = "SELECT count(*) FROM outbox WHERE state IN ('done', 'dead')"


def fill_outbox(database: BenchDatabase, count: int) -> str:
    """Insert `count` due delivery reports of one client; return the client id."""
    client_id = str(uuid.uuid4())
    conn = database.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(CLIENT_SQL, {"client_id": client_id})
            cur.execute(OUTBOX_SQL, {"client_id": client_id, "count": count})
            cur.execute("ANALYZE outbox")
    finally:
        conn.close()
    return client_id


def worker_settings(fakes_url: str) -> dict[str, str]:
    """Return the partner OAuth and Emarsys API settings pointing at the fakes."""
    return {"PARTNER_OAUTH_TOKEN_URL": f"{fakes_url}/oauth/token", "PARTNER_OAUTH_CLIENT_ID": "bench-partner",
            "PARTNER_OAUTH_CLIENT_SECRET": "bench-partner-secret",
            "EMARSYS_API_BASE_URL": f"{fakes_url}/emarsys", "FORWARD_BATCH_SIZE": str(BATCH_SIZE)}


def run_worker(database: BenchDatabase, fakes_url: str, count: int) -> dict[str, float]:
    """Run the worker until the outbox is drained; return its timings."""
    worker = start_process("forwarding-worker", [str(BIN / "flask"), "--app", "app", "worker"],
                           app_env(database.url, **worker_settings(fakes_url)))
    started = time.time()
    with running(worker):
        drained = wait_for(lambda: database.scalar(OPEN_SQL) == 0, timeout=TIME_BUDGET_SECONDS)
        finished, done = time.time(), database.scalar(FINISHED_SQL)
    if not drained:
        print(f"the outbox did not drain within {TIME_BUDGET_SECONDS:g} s; worker log:\n{worker.tail(5)}")
    first_post = fake_stats(fakes_url).get(f"emarsys_{COLLECTION}", {}).get("first", started)
    return {"started": started, "first_post": first_post, "finished": finished, "done": done}


def build_result(count: int, timings: dict[str, float], received: dict, states: dict[str, int]) -> Result:
    """Turn the run into figures and checks."""
    seconds = timings["finished"] - timings["first_post"]
    rate = timings["done"] / seconds if seconds > 0 else 0.0
    items, calls = received.get("items", 0), received.get("requests", 0)
    # The fake accepts everything, so each report it received once is `done` (nothing is dead).
    recorded = states.get("done", 0)
    figures = {"reports in the outbox": count, "done": recorded, "dead": states.get("dead", 0),
               "reports received by the fake Emarsys": items, "calls to the fake Emarsys": calls,
               "reports per call": items / calls if calls else 0.0,
               "worker start to first call s": timings["first_post"] - timings["started"],
               "first call to drained outbox (or time budget) s": seconds}
    checks = [Check("reports/s", rate, f">= {RATE_TARGET:g}", rate >= RATE_TARGET, "/s"),
              Check(f"reports not forwarded after {TIME_BUDGET_SECONDS:g} s", count - timings["done"], "= 0",
                    timings["done"] == count),
              Check("reports received beyond once each", max(0, items - recorded), "= 0", items <= recorded)]
    settings = {"worker": "flask --app app worker, default settings", "FORWARD_BATCH_SIZE": BATCH_SIZE,
                "fake Emarsys": "202 at once", "clients": 1, "time budget s": TIME_BUDGET_SECONDS}
    return Result("forwarding", f"Forwarding: {count:,} outbox reports to a fake Emarsys",
                  figures, checks, settings)


def main() -> None:
    """Start PostgreSQL and the fakes, fill the outbox, run the worker, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=50_000)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        with fake_servers() as fakes_url:
            fill_outbox(database, args.reports)
            timings = run_worker(database, fakes_url, args.reports)
            received = fake_stats(fakes_url).get(f"emarsys_{COLLECTION}", {})
        states = dict(database.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
    finally:
        database.stop()
    report(build_result(args.reports, timings, received, states))


if __name__ == "__main__":
    main()
