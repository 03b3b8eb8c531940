"""Drill: Emarsys down (503, then no answer at all) while reports keep arriving, then back.

One Genesys client is onboarded through the partner API (a JWT signed by a local key,
checked against a local JWKS). Delivery receipts for new message ids arrive on the
client's callback URL all along, and `flask --app app worker` forwards them with a short
FORWARD_RETRY_SCHEDULE. The fake Emarsys first answers 503, then holds every call past
the worker's read timeout and drops it, then recovers. Afterwards every acknowledged
receipt must have been delivered (202) exactly once: none missing, none received again
after Emarsys had acknowledged it; and the outbox must drain.

Run: python -m drills.emarsys_down [--unavailable-seconds 12] [--timeout-seconds 12]
"""
from __future__ import annotations

import argparse
import json
import time
import uuid
from urllib.parse import urlsplit

from bench.common import (BIN, BenchDatabase, EmarsysIdentity, app_env, http_request, onboard_genesys_client,
                          running, start_gunicorn, start_process, wait_for, wait_until_answers)
from drills.common import DrillResult, LoadDriver, check, ensure_running, genesys_receipt, report
from drills.fakes import TIMEOUT, UNAVAILABLE, UP, FakePeersServer, fake_peers, partner_settings
from services.forwarder import emarsys_request_timeout

OPEN_SQL = "SELECT count(*) FROM outbox WHERE state IN ('pending', 'leased')"
RETRY_SCHEDULE = "1s,2s"
LEASE_SECONDS = 8  # each Emarsys request then ends within 1.5 s (services.forwarder.emarsys_request_timeout)
HANG_SECONDS = 4.0
AFTER_RECOVERY_LOAD_S = 5.0
DRAIN_BOUND_S = 60.0
REPORTS_PER_SECOND = 200


def worker_env(database: BenchDatabase, fakes_url: str) -> dict[str, str]:
    """Return the worker's environment: the fakes, a short retry schedule and lease."""
    return app_env(database.url, **partner_settings(fakes_url), FORWARD_RETRY_SCHEDULE=RETRY_SCHEDULE,
                   LEASE_SECONDS=str(LEASE_SECONDS), FORWARD_LINGER_MS="500",
                   VENDOR_TIMEOUT_SECONDS=str(LEASE_SECONDS / 4))


def callback_path(port: int, identity: EmarsysIdentity, client_id: str) -> str:
    """Return the path of the client's delivery-report callback URL, as the service reports it."""
    answer = http_request(port, "GET", f"/clients/{client_id}/configuration", headers=identity.headers())
    url = json.loads(answer.body)["callbackUrls"]["deliveryReports"]["url"]
    return urlsplit(url).path


LOAD_THREADS = 4
# What the load driver can use per thread, with room to spare: its ids are prefix-thread-sequence.
SENT_PER_THREAD = 4000
RECORD_SENT_SQL = """
INSERT INTO message_states (vendor, vendor_message_id, client_id, emarsys_message_id, outcome, rank,
                            status_code, status_text, event_at, updated_at)
SELECT 'genesys', id, %(client_id)s, id, 'ACCEPTED', 1, '0', 'sent', now() - interval '1 hour', now()
FROM (SELECT format('%%s-%%s-%%s', %(prefix)s, t, s) AS id
      FROM generate_series(0, %(threads)s - 1) AS t, generate_series(1, %(per_thread)s) AS s) AS ids
"""


def record_sent_messages(database: BenchDatabase, client_id: str, prefix: str) -> None:
    """Record, as the dispatcher does on a send, the messages the receipts are about.

    Emarsys maps a report by its Emarsys message id, so only a message whose send tied it to
    one is forwarded. Each id here is its own Emarsys id, so what Emarsys receives compares
    directly with the receipts acknowledged.
    """
    connection = database.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(RECORD_SENT_SQL, {"client_id": client_id, "prefix": prefix, "threads": LOAD_THREADS,
                                             "per_thread": SENT_PER_THREAD})
    finally:
        connection.close()


def run_outage(database: BenchDatabase, peers: FakePeersServer, port: int, path: str, client_id: str,
               phases: tuple[float, float]) -> tuple[LoadDriver, dict[str, float]]:
    """Drive receipts through 503 and timeout phases and the recovery; return the driver and moments."""
    prefix = f"em-{uuid.uuid4().hex[:6]}"
    record_sent_messages(database, client_id, prefix)
    driver = LoadDriver(port, lambda item: genesys_receipt(path, item), prefix,
                        threads=LOAD_THREADS, per_thread_rate=REPORTS_PER_SECOND / LOAD_THREADS).start()
    moments = {"started": time.monotonic()}
    peers.mode = UNAVAILABLE
    time.sleep(phases[0])
    peers.mode = TIMEOUT
    moments["timeouts_from"] = time.monotonic()
    time.sleep(phases[1])
    peers.mode = UP
    moments["recovered"] = time.monotonic()
    moments["backlog_at_recovery"] = database.scalar(OPEN_SQL)
    time.sleep(AFTER_RECOVERY_LOAD_S)
    driver.stop(grace=30)
    moments["load_stopped"] = time.monotonic()
    wait_for(lambda: database.scalar(OPEN_SQL) == 0, timeout=DRAIN_BOUND_S)
    moments["drained"] = time.monotonic()
    return driver, moments


def evaluate(database: BenchDatabase, peers: FakePeersServer, driver: LoadDriver, moments: dict[str, float],
             phases: tuple[float, float]) -> DrillResult:
    """Compare the acknowledged receipts with what the fake Emarsys acknowledged."""
    record = peers.record
    delivered = {key.split("|", 1)[0] for key in record.emarsys_acknowledged}
    missing = driver.acknowledged - delivered
    unexpected = delivered - driver.acknowledged
    resent = sum(record.resent_after_acknowledgement.values())
    states = dict(database.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
    after = [t for t in record.acknowledged_at if t >= moments["recovered"]]
    drain_s = moments["drained"] - moments["recovered"]
    drain = drain_figures(after, moments)
    arrival = len(driver.acknowledged) / (moments["load_stopped"] - moments["started"])
    checks = [
        check("calls refused with 503 while down", record.emarsys_calls[UNAVAILABLE], ">= 1",
              record.emarsys_calls[UNAVAILABLE]),
        check("calls left unanswered (timeout) while down", record.emarsys_calls[TIMEOUT], ">= 1",
              record.emarsys_calls[TIMEOUT]),
        check("acknowledged receipts never delivered", len(missing), "= 0", not missing),
        check("distinct reports delivered", len(delivered), f"= {len(driver.acknowledged)} acknowledged",
              len(delivered) == len(driver.acknowledged) and not unexpected),
        check("items received again after a 202", resent, "= 0", resent == 0),
        check("outbox open after the drill", states.get("pending", 0) + states.get("leased", 0), "= 0",
              not states.get("pending") and not states.get("leased")),
        check("dead letters", states.get("dead", 0), "= 0", not states.get("dead")),
        check("recovery to drained outbox, s", drain_s, f"<= {DRAIN_BOUND_S:g}", drain_s <= DRAIN_BOUND_S),
        check("backlog drain rate, reports/s", drain["backlog drain rate, reports/s"],
              f"> arrival rate {arrival:.0f}/s", drain["backlog drain rate, reports/s"] > arrival),
    ]
    figures = {"503 phase s": phases[0], "timeout phase s": phases[1],
               "receipts acknowledged": len(driver.acknowledged), "receipts/s arriving": arrival,
               "backlog when Emarsys recovered": moments["backlog_at_recovery"], **peer_figures(peers),
               **drain, "outbox by state": states}
    return DrillResult("emarsys_down", "Emarsys down (503, then timeouts) while reports keep arriving",
                       tried(phases), checks, figures, settings())


def peer_figures(peers: FakePeersServer) -> dict[str, object]:
    """Return what the fake Emarsys saw, by its answer."""
    record = peers.record
    return {"calls to Emarsys by answer": dict(record.emarsys_calls),
            "items refused (503)": sum(record.emarsys_refused.values()),
            "items dropped (timeout)": sum(record.emarsys_dropped.values()),
            "items acknowledged (202)": sum(record.emarsys_acknowledged.values())}


def drain_figures(acknowledged_after: list[float], moments: dict[str, float]) -> dict[str, float]:
    """Return how fast the backlog left at the recovery went out (it goes first, in event order).

    The rate counts from the first 202 after the recovery, so the wait for each item's next
    retry (at most the last FORWARD_RETRY_SCHEDULE delay) is reported apart.
    """
    backlog = int(moments["backlog_at_recovery"])
    times = sorted(acknowledged_after)
    if not backlog or len(times) < backlog:
        return {"backlog drain rate, reports/s": 0.0}
    sending = times[backlog - 1] - times[0]
    return {"recovery to first 202 s": times[0] - moments["recovered"],
            "backlog delivered after recovery s": times[backlog - 1] - moments["recovered"],
            "backlog drain rate, reports/s": backlog / sending if sending > 0 else float(backlog),
            "recovery to empty outbox s (receipts still arriving)": moments["drained"] - moments["recovered"]}


def settings() -> dict:
    """Return the worker settings the drill runs with."""
    return {"FORWARD_RETRY_SCHEDULE": RETRY_SCHEDULE, "LEASE_SECONDS": LEASE_SECONDS,
            "worker read timeout s": emarsys_request_timeout(LEASE_SECONDS)[1], "fake holds a call s": HANG_SECONDS,
            "FORWARD_LINGER_MS": 500, "receipts/s": REPORTS_PER_SECOND}


def tried(phases: tuple[float, float]) -> list[str]:
    """Describe the drill in plain words."""
    return ["one Genesys client onboarded through PUT /clients/{id}/configuration with a locally signed JWT",
            f"{LOAD_THREADS * SENT_PER_THREAD} messages recorded as sent for the client, as the dispatcher "
            "records a send (each with its Emarsys message id)",
            f"receipts for those messages on the client's callback URL all along, {LOAD_THREADS} threads paced "
            f"at up to {REPORTS_PER_SECOND}/s in all",
            f"fake Emarsys answers 503 for {phases[0]:g} s, then holds each call {HANG_SECONDS:g} s "
            f"(past the worker's read timeout) and drops it for {phases[1]:g} s, then answers 202",
            f"receipts keep arriving {AFTER_RECOVERY_LOAD_S:g} s after the recovery; then the outbox must drain"]


def main() -> int:
    """Start PostgreSQL, the fakes, the web app and the worker; run the drill; report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--unavailable-seconds", type=float, default=12)
    parser.add_argument("--timeout-seconds", type=float, default=12)
    args = parser.parse_args()
    phases = (args.unavailable_seconds, args.timeout_seconds)
    identity = EmarsysIdentity()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        with fake_peers(jwks=identity.jwks(), hang_seconds=HANG_SECONDS) as peers:
            web, port = start_gunicorn("drill-emarsys-web", "wsgi:app",
                                       app_env(database.url, **identity.settings(peers.url)), workers=2)
            worker = start_process("drill-emarsys-worker", [str(BIN / "flask"), "--app", "app", "worker"],
                                   worker_env(database, peers.url))
            with running(web), running(worker):
                wait_until_answers(port, "/health")
                client_id = onboard_genesys_client(port, identity, peers.url)
                path = callback_path(port, identity, client_id)
                ensure_running(worker)
                driver, moments = run_outage(database, peers, port, path, client_id, phases)
            return report(evaluate(database, peers, driver, moments, phases))
    finally:
        database.stop()


if __name__ == "__main__":
    raise SystemExit(main())
