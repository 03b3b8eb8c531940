"""Outbound accept benchmark: POST /clients/{id}/messages with 1000 valid messages, repeatedly.

One Genesys client is onboarded through the partner API; then --batches batches of 1000
messages, each with fresh emarsysMessageIds and a valid Emarsys bearer token (RS256, keys
served by the local fake JWKS), are posted one after another. Every answer must be 202 and
every message queued.

Run: python -m bench.outbound_accept [--batches 50]
"""
from __future__ import annotations

import argparse
import time
import uuid

from bench.common import (BenchDatabase, Check, EmarsysIdentity, Result, app_env, fake_servers, http_request,
                          median, message_batch, onboard_genesys_client, percentile, report, running,
                          start_gunicorn, wait_until_answers)

BATCH_SIZE = 1000
P99_TARGET_MS = 300.0
WARM_UP_BATCHES = 3
# Posting stops after this long, however many batches were sent, so `make bench` stays bounded.
TIME_BUDGET_SECONDS = 90.0


def post_batches(port: int, identity: EmarsysIdentity, client_id: str, batches: int) -> list[float]:
    """Post the batches one after another, within the time budget; return each answer's milliseconds."""
    timings: list[float] = []
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    for _ in range(batches):
        if time.monotonic() > deadline:
            break
        body = message_batch(uuid.uuid4().hex[:12], BATCH_SIZE)
        answer = http_request(port, "POST", f"/clients/{client_id}/messages", body, identity.headers())
        if answer.status != 202:
            raise RuntimeError(f"batch answered {answer.status}: {answer.body[:300]!r}")
        timings.append(answer.millis)
    return timings


def measure(database: BenchDatabase, batches: int) -> tuple[list[float], int]:
    """Run the service with the partner API configured; return batch timings and messages queued."""
    identity = EmarsysIdentity()
    with fake_servers(jwks=identity.jwks()) as fakes_url:
        env = app_env(database.url, **identity.settings(fakes_url))
        process, port = start_gunicorn("outbound-app", "wsgi:app", env)
        with running(process):
            wait_until_answers(port, "/health")
            client_id = onboard_genesys_client(port, identity, fakes_url)
            post_batches(port, identity, client_id, WARM_UP_BATCHES)
            timings = post_batches(port, identity, client_id, batches)
    queued = database.scalar("SELECT count(*) FROM outbound_messages WHERE state = 'queued'")
    return timings, queued


def build_result(timings: list[float], queued: int, batches: int) -> Result:
    """Turn the timings into figures and checks."""
    expected = (len(timings) + WARM_UP_BATCHES) * BATCH_SIZE
    p99 = percentile(timings, 0.99)
    figures = {"batches posted": len(timings), "messages per batch": BATCH_SIZE, "p50 ms": median(timings),
               "p90 ms": percentile(timings, 0.90), "max ms": max(timings),
               "messages accepted/s (one poster)": len(timings) * BATCH_SIZE / (sum(timings) / 1000),
               "messages queued": queued}
    checks = [Check("p99 ms of the 202", p99, f"< {P99_TARGET_MS:g}", p99 < P99_TARGET_MS, "ms"),
              Check("messages not queued", expected - queued, "= 0", queued == expected)]
    settings = {"client": "one batch at a time, new connection each", "token": "RS256 JWT, JWKS from a local fake",
                "batches asked": batches, "time budget s": TIME_BUDGET_SECONDS}
    return Result("outbound_accept", f"Outbound accept: {len(timings)} batches of {BATCH_SIZE} messages",
                  figures, checks, settings)


def main() -> None:
    """Start PostgreSQL, the fakes and the service, post the batches, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        timings, queued = measure(database, args.batches)
    finally:
        database.stop()
    report(build_result(timings, queued, args.batches))


if __name__ == "__main__":
    main()
