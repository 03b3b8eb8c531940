"""Render docs/reliability.md from the drill results (drills/results/*.json)."""
from __future__ import annotations

from typing import Any

from bench.common import format_value, utc_now_iso

TITLES = {"worker_kill": "1. Web worker killed with SIGKILL under load",
          "postgres_restart": "2. PostgreSQL restarted under load",
          "emarsys_down": "3. Emarsys down while reports keep arriving",
          "two_instances": "4. Two web instances and two workers on one PostgreSQL",
          "fuzz": "5. Fuzz: schemathesis against /openapi.json and partner-service.yaml"}

FINDINGS = """## What the drills found, and what was changed

- **A receipt committed during a PostgreSQL restart was answered 500, and the connection pool lost a
  slot for good** (drill 2). The ingest hot path ran its one statement on a connection with SQLAlchemy's
  `isolation_level="AUTOCOMMIT"` option. When `pg_ctl stop -m fast` dropped the connection right after
  the commit, resetting the isolation level on the way back to the pool raised a raw
  `psycopg2.OperationalError`: the error handler did not recognise it (500 for a stored receipt), and
  SQLAlchemy skipped returning the connection record to the pool, so every such event leaks one of the
  worker's 15 pool slots until requests wait 30 s for a connection. Fixed in `services/prepared.py`
  (`driver_autocommit`): autocommit is switched on the driver connection for the statement and back off
  guarded, invalidating the connection when that fails; still one round trip per receipt.
- **While PostgreSQL was down, receipts were answered 500 instead of 503** (drill 2, 2026-12-01). The
  hot path had just moved to a connection per web thread (`services/thread_connections.py`), made
  with `engine.raw_connection()`, which raises the driver's own `psycopg2.OperationalError` rather
  than SQLAlchemy's, so the 503 handler did not see it. Nothing was acknowledged that was not
  stored, but a vendor should be told to retry: the connect error is now wrapped like every other
  database error (503), with a test against an unreachable database.
- **`GET /status?page=<huge>` answered 500** (fuzz): the page turned into an OFFSET beyond `bigint`.
  `schemas/status.py` now bounds `page` to 2^31−2 (400 above it, also in /openapi.json).
- **`POST /testConnection` with a non-Latin-1 Twilio `authToken` answered 500** (fuzz): requests encodes
  Basic credentials as Latin-1. `services/vendors/twilio.py` now passes them as UTF-8 bytes.
- **Lone UTF-16 surrogates (`"\\udc00"`, legal in JSON) answered 500** (fuzz) in `POST
  /clients/{id}/messages` (PostgreSQL cannot store them) and in `/testConnection` (they cannot be
  sent to a vendor); they could also be stored in a client configuration and break every later send.
  `schemas/outbound.py` and `schemas/client_config.py` now refuse them as invalid fields (400 with the
  spec's error bodies).
- **`GET /dashboard?message_id=%00` (or `vendor=`) answered 500** (fuzz): PostgreSQL text cannot hold
  NUL. `routes/dashboard.py` now answers 400.
- **`GET /status?sourceSystem=<text with %00>` answered 500** (fuzz, 2026-12-01): the same NUL, reaching
  the paging statement. `schemas/status.py` now refuses it as an invalid `sourceSystem` (400), with the
  NUL check every schema shares (`schemas/text.py`).
- **The Emarsys-down drill itself had to change** (2026-12-01). A code review found that a client's
  vendor report about a message whose Emarsys id was not known yet was forwarded under the vendor's
  id, an id Emarsys never issued; it is now forwarded only under the Emarsys id, once the send result
  ties it. The drill had posted receipts for ids never sent, so none reached Emarsys any more (every
  check of delivery failed): it now records its messages as sent first, as the dispatcher does."""

LIMITS = """## Known limits (not failures of a drill)

- Requests that gunicorn itself refuses before the app sees them (a request line over 8190 bytes: 414;
  a malformed request line: 400; too many or too large header fields: 431) get a JSON error from the
  worker class in `gunicorn_workers.py`, so the fuzz drill treats any HTML page as a finding.
- Schemathesis deliberately leaves the credentials out of some negative cases; those get 401 (JSON).
- A PostgreSQL that is restarted or stopped is drilled; one that hangs without closing connections
  (e.g. a network partition) is not: a statement already sent on a pooled connection then waits for
  TCP to give up, since `statement_timeout` is enforced by the server.
- The figures come from a 2-core machine shared with other work (see the load averages); the drills
  assert outcomes, not speeds, except the bounds stated in each check."""

RERUN = """## Rerun

`make drills` installs what it needs, runs every drill under a hard time limit (about 4 minutes in
all on this machine; the limits add up to 14.5), rewrites this file and exits non-zero if any drill
failed. One drill: `.venv/bin/python -m
drills.<name>` (e.g. `drills.worker_kill --seconds 20 --kills 4`); a subset: `.venv/bin/python -m
drills.run --only worker_kill,fuzz`; this file from the last results: `--docs-only`. Each drill
prints what it tried, its checks and its figures, and writes `drills/results/<name>.json`. Logs of
the processes a drill starts are in `$TMPDIR/sms-status-bench-logs/`. A bounded fuzz (about 250
requests, in-process) runs in `make test` (`tests/test_fuzz.py`)."""


def render(results: dict[str, dict[str, Any]]) -> str:
    """Return the whole Markdown document."""
    parts = [_header(results), _summary(results)]
    parts += [_section(name, results[name]) for name in TITLES if name in results]
    parts += [FINDINGS, LIMITS, RERUN]
    return "\n\n".join(parts) + "\n"


def _header(results: dict[str, dict[str, Any]]) -> str:
    machines = [result["machine"] for result in results.values() if result.get("machine")]
    first = machines[0] if machines else {}
    dates = sorted(m.get("date", "") for m in machines)
    loads = ", ".join(f"{name} {result['machine'].get('load_average_at_start', ['?'])[0]}"
                      for name, result in results.items() if result.get("machine"))
    return "\n".join([
        "# Reliability: fault drills",
        "",
        "Each drill starts its own throwaway PostgreSQL, the service under gunicorn with production",
        "settings and, where needed, `flask --app app worker` and local fakes of Genesys and Emarsys;",
        "it breaks one thing under load and asserts what must hold. This file is written by",
        "`make drills` (`drills/run.py`) from `drills/results/*.json`.",
        "",
        f"- Generated: {utc_now_iso()}; drills run {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}",
        f"- Machine: {first.get('nproc', '?')} cores, {first.get('cpu_model', '?')}, "
        f"{first.get('postgresql', '?')}, Python {first.get('python', '?')}, kernel {first.get('kernel', '?')}",
        f"- 1-minute load average when each drill started: {loads or '?'}",
    ])


def _summary(results: dict[str, dict[str, Any]]) -> str:
    lines = ["## Summary", "", "| drill | outcome | checks held |", "| --- | --- | --- |"]
    for name, title in TITLES.items():
        result = results.get(name)
        if result is None:
            lines.append(f"| {title} | not run | |")
            continue
        checks = result.get("checks", [])
        outcome = "held" if result.get("held") else f"**FAILED** {result.get('did_not_finish', '')}".strip()
        lines.append(f"| {title} | {outcome} | {sum(c['met'] for c in checks)} of {len(checks)} |")
    return "\n".join(lines)


def _section(name: str, result: dict[str, Any]) -> str:
    lines = [f"## {TITLES[name]}", "", f"Run {result.get('machine', {}).get('date', '?')}.", "", "What was tried:", ""]
    lines += [f"- {line}" for line in result.get("tried", [])] or ["- (the drill did not finish)"]
    lines += ["", "What held (every check is asserted; the drill fails if one does not hold):", "",
              "| check | measured | must be | |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {_cell(c['value'])} | {c['target']} | {'held' if c['met'] else '**FAILED**'} |"
              for c in result.get("checks", [])]
    lines += ["", "Figures:", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in result.get("figures", {}).items()]
    if result.get("settings"):
        lines += ["", "Settings: " + "; ".join(f"{k} = {_cell(v)}" for k, v in result["settings"].items())]
    if result.get("did_not_finish"):
        lines += ["", f"Did not finish: {result['did_not_finish']}"]
    if result.get("notes"):
        lines += ["", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{key}: {item}" for key, item in value.items())
    elif isinstance(value, list):
        text = ", ".join(map(str, value))
    else:
        text = format_value(value)
    return text.replace("|", "\\|")
