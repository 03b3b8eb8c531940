"""Drill: fuzz every endpoint with schemathesis, over HTTP, against the service under gunicorn.

Two documents drive the generator: the service's own /openapi.json (every endpoint) and
the Emarsys partner-service.yaml (the partner endpoints as Emarsys specifies them). Every
request carries valid credentials for its operation: Basic for the SAP pull and the
operator pages, a JWT signed by a local RSA key (its JWKS served locally) for the partner
API. Operations with a client id or callback token in their path get a second pass with a
configured client's values. Rounds repeat until at least --requests were sent. There must
be no 5xx, and every 4xx must carry a JSON body.

Run: python -m drills.fuzz [--requests 2000] [--examples 30]
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bench.common import (ADMIN_PASSWORD, ADMIN_USER, SAP_PASSWORD, SAP_USER, BenchDatabase, EmarsysIdentity,
                          app_env, http_request, running, start_gunicorn, wait_until_answers)
from drills.common import DrillResult, check, report
from drills.fakes import fake_peers
from drills.fuzzing import (Credentials, Fuzzer, FuzzTally, basic, load_own_schema, load_partner_schema,
                            spec_dir)

TIME_BUDGET_S = 200.0
MAX_FINDINGS_SHOWN = 20


def known_client(port: int, identity: EmarsysIdentity, sink_url: str) -> tuple[dict[str, str], Callable[[], None]]:
    """Configure a Genesys client; return its path values and a function that configures it again."""
    client_id = "7f9a2c1e-4b6d-4e8f-9a0b-1c2d3e4f5a6b"
    body = json.dumps({"customFieldValues": {"vendor": "genesys", "login": "fuzz", "password": "fuzz-pw",
                                             "baseUrl": sink_url}}).encode()

    def configure() -> dict:
        answer = http_request(port, "PUT", f"/clients/{client_id}/configuration", body, identity.headers())
        if answer.status != 200:
            raise RuntimeError(f"configuring the fuzz client answered {answer.status}: {answer.body[:200]!r}")
        return json.loads(answer.body)

    url = configure()["callbackUrls"]["deliveryReports"]["url"]
    token = urlsplit(url).path.split("/clients/", 1)[1].split("/", 1)[0]
    values = {"client_id": client_id, "clientId": client_id, "token": token, "vendor": "genesys"}

    def configure_again() -> None:
        configure()  # a fuzzed DELETE may have removed it

    return values, configure_again


def fuzz(port: int, identity: EmarsysIdentity, sink_url: str, target: int, examples: int) -> tuple[list, dict]:
    """Fuzz both documents in rounds until `target` requests or the time budget; return tallies."""
    base_url = f"http://127.0.0.1:{port}"
    credentials = Credentials(basic(SAP_USER, SAP_PASSWORD), basic(ADMIN_USER, ADMIN_PASSWORD),
                              lambda: identity.headers()["Authorization"], sink_url)
    values, configure = known_client(port, identity, sink_url)
    document = json.loads(http_request(port, "GET", "/openapi.json").body)
    schemas = {"own /openapi.json": load_own_schema(document, base_url)}
    notes = []
    if (spec_dir() / "partner-service.yaml").exists():
        schemas["partner-service.yaml"] = load_partner_schema(spec_dir(), base_url)
    else:
        notes.append(f"partner-service.yaml not found in {spec_dir()} (set EMARSYS_SPEC_DIR): that half was skipped")
    fuzzers = {name: Fuzzer(lambda case, headers: case.call(base_url=base_url, headers=headers, timeout=30),
                            credentials, values, configure) for name in schemas}
    deadline, rounds = time.monotonic() + TIME_BUDGET_S, 0
    while sum(f.tally.requests for f in fuzzers.values()) < target and time.monotonic() < deadline:
        rounds += 1
        for name, schema in schemas.items():
            fuzzers[name].fuzz_schema(schema, examples, deadline)
    return notes, {"rounds": rounds, "tallies": {name: f.tally for name, f in fuzzers.items()}}


def evaluate(outcome: dict, notes: list[str], target: int) -> DrillResult:
    """Check the tallies: enough requests, no 5xx, JSON on every 4xx."""
    tallies: dict[str, FuzzTally] = outcome["tallies"]
    total = sum(t.requests for t in tallies.values())
    findings = [f for t in tallies.values() for f in t.findings]
    server_errors = sum(n for t in tallies.values() for status, n in t.statuses.items() if status >= 500)
    checks = [check("generated requests", total, f">= {target}", total >= target),
              check("5xx answers", server_errors, "= 0", server_errors == 0),
              check("findings (5xx, 4xx without JSON, no answer)", len(findings), "= 0", not findings)]
    figures = {"rounds": outcome["rounds"],
               **{f"{name}: {key}": value for name, t in tallies.items() for key, value in t.summary().items()}}
    for finding in findings[:MAX_FINDINGS_SHOWN]:
        notes.append(f"{finding.operation} ({finding.mode}): {finding.problem}; {finding.request[:300]}")
    skipped = sorted({s for t in tallies.values() for s in t.skipped})
    notes += [f"not generated: {s}" for s in skipped]
    return DrillResult("fuzz", "Fuzz: schemathesis against /openapi.json and partner-service.yaml", tried(target),
                       checks, figures, {"modes": "positive and negative", "time budget s": TIME_BUDGET_S}, notes)


def tried(target: int) -> list[str]:
    """Describe the drill in plain words."""
    return [f"schemathesis cases, positive and negative, for every operation of /openapi.json and of "
            f"partner-service.yaml, until at least {target} requests",
            "valid credentials per operation: SAP Basic, admin Basic, or an Emarsys JWT from a local JWKS",
            "a second pass per operation with a configured client's id and callback token in the path",
            "generated vendor baseUrl values pointed at a local sink (testConnection calls the vendor)"]


def main() -> int:
    """Start PostgreSQL, the fakes and gunicorn; fuzz; report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=30, help="cases per operation, mode and pass")
    args = parser.parse_args()
    identity = EmarsysIdentity()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        with fake_peers(jwks=identity.jwks()) as peers:
            env = app_env(database.url, **identity.settings(peers.url), VENDOR_TIMEOUT_SECONDS="3")
            process, port = start_gunicorn("drill-fuzz", "wsgi:app", env, workers=2)
            with running(process):
                wait_until_answers(port, "/health")
                notes, outcome = fuzz(port, identity, f"{peers.url}/genesys/send", args.requests, args.examples)
        return report(evaluate(outcome, notes, args.requests))
    finally:
        database.stop()


if __name__ == "__main__":
    raise SystemExit(main())
