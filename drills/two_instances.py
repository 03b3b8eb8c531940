"""Drill: two web instances and two workers on one PostgreSQL.

Two gunicorn masters (two ports, as two app instances behind a router) and two
`flask --app app worker` processes share one database. One Genesys client is onboarded;
every batch of campaign messages is posted to BOTH instances at the same time (Emarsys
retrying on another instance), the workers send them to a fake Genesys that counts each
`message_id`, and every delivery receipt is posted to both instances too. Each send and
each receipt becomes an outbox report that the workers forward to a fake Emarsys that
counts each report. No message may be sent twice, no report forwarded twice.

Run: python -m drills.two_instances [--messages 1000]
"""
from __future__ import annotations

import argparse
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from bench.common import (BIN, BenchDatabase, EmarsysIdentity, Process, app_env, http_request, message_batch,
                          onboard_genesys_client, running, start_gunicorn, start_process, wait_for,
                          wait_until_answers)
from drills.common import DrillResult, check, ensure_running, genesys_receipt, report
from drills.fakes import FakePeersServer, fake_peers, partner_settings

BATCH_SIZE = 100
GENESYS_DELAY_S = 0.02
SETTLE_BOUND_S = 90.0
OPEN_MESSAGES_SQL = "SELECT count(*) FROM outbound_messages WHERE state IN ('queued', 'sending')"
OPEN_OUTBOX_SQL = "SELECT count(*) FROM outbox WHERE state IN ('pending', 'leased')"


def post_to_both(ports: list[int], identity: EmarsysIdentity, client_id: str, messages: int) -> list[int]:
    """Post every batch to each instance at once; return the statuses of all posts."""
    batches = [message_batch(f"two-{uuid.uuid4().hex[:8]}", BATCH_SIZE) for _ in range(messages // BATCH_SIZE)]
    path = f"/clients/{client_id}/messages"
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        futures = [pool.submit(http_request, port, "POST", path, body, identity.headers())
                   for body in batches for port in ports]
        return [future.result().status for future in futures]


def deliver_receipts(ports: list[int], path: str, message_ids: list[str]) -> list[int]:
    """Post a delivery receipt for every sent message to each instance; return the statuses."""
    def post(port: int, message_id: str) -> int:
        request = genesys_receipt(path, message_id)
        return http_request(port, request.method, request.path, request.body, request.headers).status

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(post, port, message_id) for message_id in message_ids for port in ports]
        return [future.result() for future in futures]


def callback_path(port: int, identity: EmarsysIdentity, client_id: str) -> str:
    """Return the path of the client's delivery-report callback URL, as the service reports it."""
    answer = http_request(port, "GET", f"/clients/{client_id}/configuration", headers=identity.headers())
    return urlsplit(json.loads(answer.body)["callbackUrls"]["deliveryReports"]["url"]).path


def run(database: BenchDatabase, peers: FakePeersServer, identity: EmarsysIdentity, ports: list[int],
        workers: list[Process], messages: int) -> dict:
    """Onboard, post the batches to both instances, deliver receipts, wait for the workers."""
    client_id = onboard_genesys_client(ports[0], identity, peers.url)
    path = callback_path(ports[1], identity, client_id)
    for worker in workers:
        ensure_running(worker)
    started = time.monotonic()
    batch_statuses = post_to_both(ports, identity, client_id, messages)
    sent = wait_for(lambda: database.scalar(OPEN_MESSAGES_SQL) == 0, timeout=SETTLE_BOUND_S)
    dispatched = time.monotonic()
    receipt_statuses = deliver_receipts(ports, path, sorted(peers.record.genesys_sends))
    forwarded = wait_for(lambda: database.scalar(OPEN_OUTBOX_SQL) == 0, timeout=SETTLE_BOUND_S)
    return {"batch_statuses": batch_statuses, "receipt_statuses": receipt_statuses, "sent": sent,
            "forwarded": forwarded, "dispatch_s": dispatched - started,
            "total_s": time.monotonic() - started}


def evaluate(database: BenchDatabase, peers: FakePeersServer, outcome: dict, messages: int,
             workers: list[Process]) -> DrillResult:
    """Count sends per message_id and forwards per report against the database."""
    record = peers.record
    sends = record.genesys_sends
    twice_sent = sum(1 for count in sends.values() if count > 1)
    twice_forwarded = sum(1 for count in record.emarsys_acknowledged.values() if count > 1)
    queued = database.scalar("SELECT count(*) FROM outbound_messages")
    sent_rows = database.scalar("SELECT count(*) FROM outbound_messages WHERE state = 'sent'")
    outbox = dict(database.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
    forwards = sum(record.emarsys_acknowledged.values())
    bad_batches = [s for s in outcome["batch_statuses"] if s != 202]
    bad_receipts = [s for s in outcome["receipt_statuses"] if not 200 <= s < 300]
    checks = [
        check("batch posts not answered 202", len(bad_batches), "= 0", not bad_batches),
        check("messages queued", queued, f"= {messages} (each posted twice)", queued == messages),
        check("messages sent", sent_rows, f"= {messages}", sent_rows == messages and outcome["sent"]),
        check("distinct message_ids at Genesys", len(sends), f"= {messages}", len(sends) == messages),
        check("message_ids sent more than once", twice_sent, "= 0", twice_sent == 0),
        check("receipt posts not answered 2xx", len(bad_receipts), "= 0", not bad_receipts),
        check("outbox reports done", outbox.get("done", 0), f"= {2 * messages} (send result + receipt)",
              outbox.get("done", 0) == 2 * messages and outcome["forwarded"]),
        check("reports forwarded", forwards, f"= {outbox.get('done', 0)} done", forwards == outbox.get("done", 0)),
        check("reports forwarded more than once", twice_forwarded, "= 0", twice_forwarded == 0),
    ]
    return DrillResult("two_instances", "Two web instances and two workers on one PostgreSQL", tried(messages),
                       checks, figures(peers, outcome, messages, outbox, workers),
                       {"web": "2 gunicorn masters, -w 2 each (gunicorn.conf.py's sync worker)", "workers": 2,
                        "fake Genesys delay s": GENESYS_DELAY_S})


def figures(peers: FakePeersServer, outcome: dict, messages: int, outbox: dict[str, int],
            workers: list[Process]) -> dict[str, object]:
    """Return the drill's figures: volumes, timings and each worker's share."""
    return {"messages": messages, "batch posts": len(outcome["batch_statuses"]),
            "receipt posts": len(outcome["receipt_statuses"]),
            "sends received by Genesys": sum(peers.record.genesys_sends.values()),
            "post to all sent s": outcome["dispatch_s"], "post to all forwarded s": outcome["total_s"],
            "outbox by state": outbox, "calls to Emarsys": dict(peers.record.emarsys_calls),
            "work per worker (log lines: sends, forwards)": work_per_worker(workers)}


def work_per_worker(workers: list[Process]) -> dict[str, list[int]]:
    """Count each worker's logged sends and forward calls, to show both took part."""
    counts = {}
    for worker in workers:
        text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
        counts[worker.name] = [text.count("genesys send "), text.count("-> delivered")]
    return counts


def tried(messages: int) -> list[str]:
    """Describe the drill in plain words."""
    return [f"{messages} messages in batches of {BATCH_SIZE}, each batch posted to both instances at once",
            "two workers dispatch to a fake Genesys (counts message_id) and forward to a fake Emarsys "
            "(counts each report)",
            "a delivery receipt for every sent message posted to both instances"]


def main() -> int:
    """Start PostgreSQL, the fakes, two web instances and two workers; run the drill; report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    identity = EmarsysIdentity()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        with fake_peers(jwks=identity.jwks(), genesys_delay=GENESYS_DELAY_S) as peers:
            web_env = app_env(database.url, **identity.settings(peers.url))
            web_a, port_a = start_gunicorn("drill-two-web-a", "wsgi:app", web_env, workers=2)
            web_b, port_b = start_gunicorn("drill-two-web-b", "wsgi:app", web_env, workers=2)
            worker_env = app_env(database.url, **partner_settings(peers.url))
            workers = [start_process(f"drill-two-worker-{n}", [str(BIN / "flask"), "--app", "app", "worker"],
                                     worker_env) for n in (1, 2)]
            with running(web_a), running(web_b), running(workers[0]), running(workers[1]):
                wait_until_answers(port_a, "/health")
                wait_until_answers(port_b, "/health")
                outcome = run(database, peers, identity, [port_a, port_b], workers, args.messages)
            return report(evaluate(database, peers, outcome, args.messages, workers))
    finally:
        database.stop()


if __name__ == "__main__":
    raise SystemExit(main())
