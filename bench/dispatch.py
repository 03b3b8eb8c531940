"""Dispatch benchmark: 10,000 queued messages sent to a fake Genesys that answers in 20 ms.

One Genesys client is onboarded through the partner API (its baseUrl points at the fake);
the messages are bulk-queued with SQL; then `flask --app app worker` runs with the default
worker settings until no message is queued or sending. The rate counts from the first send
the fake receives to the moment the queue is empty. Every message must be sent exactly once.

Run: python -m bench.dispatch [--messages 10000]
"""
from __future__ import annotations

import argparse
import time

from bench.common import (BIN, BenchDatabase, Check, EmarsysIdentity, Result, app_env, fake_servers, fake_stats,
                          onboard_genesys_client, report, running, start_gunicorn, start_process,
                          wait_for, wait_until_answers)

RATE_TARGET = 400.0
GENESYS_DELAY_MS = 20.0
# The worker is stopped after this long, drained or not, so `make bench` stays bounded.
TIME_BUDGET_SECONDS = 150.0

QUEUE_SQL = """
INSERT INTO outbound_messages (public_id, client_id, emarsys_message_id, source, destination, body, state,
                               attempts, next_attempt_at, created_at, updated_at)
SELECT md5(%(prefix)s || g), %(client_id)s, %(prefix)s || '-' || g, 'BENCH', '+49151' || lpad(g::text, 8, '0'),
       'Campaign message ' || g || ': 20%% off today only', 'queued', 0,
       now() AT TIME ZONE 'utc' - interval '1 second', now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc'
FROM generate_series(1, %(count)s) AS g
"""
OPEN_SQL = "SELECT count(*) FROM outbound_messages WHERE state IN ('queued', 'sending')"
DONE_SQL = "SELECT count(*) FROM outbound_messages WHERE state IN ('sent', 'failed')"


def queue_messages(database: BenchDatabase, client_id: str, count: int) -> None:
    """Queue `count` messages for the client in one statement."""
    conn = database.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(QUEUE_SQL, {"prefix": f"bench-{int(time.time())}", "client_id": client_id, "count": count})
            cur.execute("ANALYZE outbound_messages")
    finally:
        conn.close()


def onboard(database: BenchDatabase, identity: EmarsysIdentity, fakes_url: str) -> str:
    """Onboard one Genesys client through the partner API and return its id."""
    env = app_env(database.url, **identity.settings(fakes_url))
    process, port = start_gunicorn("dispatch-app", "wsgi:app", env, workers=1)
    with running(process):
        wait_until_answers(port, "/health")
        return onboard_genesys_client(port, identity, fakes_url)


def run_worker(database: BenchDatabase, fakes_url: str, count: int) -> dict[str, float]:
    """Run the worker with default settings until the queue is empty; return its timings."""
    command = [str(BIN / "flask"), "--app", "app", "worker"]
    worker = start_process("dispatch-worker", command, app_env(database.url))
    started = time.time()
    with running(worker):
        drained = wait_for(lambda: database.scalar(OPEN_SQL) == 0, timeout=TIME_BUDGET_SECONDS)
        finished, done = time.time(), database.scalar(DONE_SQL)
    if not drained:
        print(f"the queue did not drain within {TIME_BUDGET_SECONDS:g} s; worker log:\n{worker.tail(5)}")
    first_send = fake_stats(fakes_url).get("genesys", {}).get("first", started)
    return {"started": started, "first_send": first_send, "finished": finished, "done": done}


def build_result(count: int, timings: dict[str, float], sends: int, states: dict[str, int]) -> Result:
    """Turn the run into figures and checks."""
    sending_seconds = timings["finished"] - timings["first_send"]
    rate = timings["done"] / sending_seconds if sending_seconds > 0 else 0.0
    # The worker finishes its batch on SIGTERM, so every send it made is recorded by now.
    recorded = states.get("sent", 0) + states.get("failed", 0)
    figures = {"messages queued": count, "sent": states.get("sent", 0), "failed": states.get("failed", 0),
               "sends received by the fake Genesys": sends,
               "worker start to first send s": timings["first_send"] - timings["started"],
               "first send to empty queue (or time budget) s": sending_seconds,
               "messages/s incl. worker start": timings["done"] / (timings["finished"] - timings["started"])}
    checks = [Check("messages/s", rate, f">= {RATE_TARGET:g}", rate >= RATE_TARGET, "/s"),
              Check(f"messages unsent after {TIME_BUDGET_SECONDS:g} s", count - timings["done"], "= 0",
                    timings["done"] == count),
              Check("sends beyond one per message", max(0, sends - recorded), "= 0", sends <= recorded)]
    settings = {"worker": "flask --app app worker, default settings (DISPATCH_BATCH_SIZE, DISPATCH_CONCURRENCY)",
                "fake Genesys": f"result_code=0 after {GENESYS_DELAY_MS:g} ms", "forwarder": "not configured",
                "time budget s": TIME_BUDGET_SECONDS}
    return Result("dispatch", f"Dispatch: {count:,} queued messages to a fake Genesys ({GENESYS_DELAY_MS:g} ms)",
                  figures, checks, settings)


def main() -> None:
    """Start PostgreSQL, the fakes, onboard, queue, run the worker, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    identity = EmarsysIdentity()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        with fake_servers(jwks=identity.jwks(), genesys_delay_ms=GENESYS_DELAY_MS) as fakes_url:
            client_id = onboard(database, identity, fakes_url)
            queue_messages(database, client_id, args.messages)
            timings = run_worker(database, fakes_url, args.messages)
            sends = fake_stats(fakes_url).get("genesys", {}).get("requests", 0)
        states = dict(database.rows("SELECT state, count(*) FROM outbound_messages GROUP BY state"))
    finally:
        database.stop()
    report(build_result(args.messages, timings, sends, states))


if __name__ == "__main__":
    main()
