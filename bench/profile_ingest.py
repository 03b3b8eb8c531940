"""Profile the ingest path: where one vendor receipt's time goes, by layer and by function.

Sends --requests receipts (the ingest benchmark's mix) through `app.test_client()` in this
process, against a throwaway PostgreSQL, under cProfile. Each function's own time is
charged to a layer (database wait, SQLAlchemy, Flask/Werkzeug, JSON, logging, ...), and
every statement sent to PostgreSQL is counted, so the round trips per receipt are known.

Run: python -m bench.profile_ingest [--requests 2000]
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from bench.common import LOG_DIR, BenchDatabase, Result, StatementLog, app_env, report

# First matching fragment of a function's file (or name) decides its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("PostgreSQL round trips (waiting in psycopg2)", ("psycopg2", "{method 'execute' of 'psycopg2",
                                                      "{method 'commit' of 'psycopg2",
                                                      "{method 'fetch", "{method 'rollback' of 'psycopg2")),
    ("SQLAlchemy: compiling SQL text", ("sqlalchemy/sql/compiler", "sqlalchemy/sql/crud",
                                        "sqlalchemy/dialects/postgresql/base")),
    ("SQLAlchemy: statement cache keys", ("sqlalchemy/sql/cache_key", "sqlalchemy/sql/traversals")),
    ("SQLAlchemy: building statements per request (insert/values/on_conflict/expressions)",
     ("sqlalchemy/sql/", "sqlalchemy/dialects/", "sqlalchemy/util/")),
    ("SQLAlchemy: ORM session and bulk persistence", ("sqlalchemy/orm/",)),
    ("SQLAlchemy: engine, connection pool, results", ("sqlalchemy/engine/", "sqlalchemy/pool/",
                                                      "sqlalchemy/event/", "sqlalchemy")),
    ("JSON", ("json/", "{built-in method _json", "{method 'encode' of '_json", "_json.")),
    ("logging", ("logging/", "logging_setup", "pythonjsonlogger")),
    ("Flask/Werkzeug (routing, request, response)", ("flask/", "werkzeug/", "flask_sqlalchemy")),
    ("service code (routes, mappers, services)", ("/routes/", "/mappers/", "/services/", "/schemas/",
                                                 "/models/", "/errors.py")),
    ("hashing/uuid/datetime", ("hashlib", "uuid", "datetime", "{built-in method _hashlib",
                               "{method 'hexdigest'", "{built-in method now}")),
]


def layer_of(function: tuple[str, int, str]) -> str:
    """Return the layer a cProfile function key belongs to."""
    filename, _, name = function
    where = f"{filename}:{name}" if filename != "~" else name
    for layer, fragments in LAYERS:
        if any(fragment in where for fragment in fragments):
            return layer
    return "other (Python runtime, test client)"


def receipt(client, number: int, prefix: str):
    """Send one receipt of the benchmark's mix through the test client."""
    message_id, bounce = f"{prefix}-{number}", number % 10 < 2
    if number % 2 == 0:
        state = ({"message_state": "5", "result_code": "1"} if bounce
                 else {"message_state": "2", "result_code": "0"})
        return client.post("/vendors/genesys/delivery-reports",
                           data={"type": "receipt", "message_id": f"g-{message_id}", **state})
    now = datetime.now(timezone.utc)
    return client.get("/api/v1/notifications/set", query_string={
        "orderID": f"s-{message_id}", "date": now.strftime("%d%m%Y"), "time": now.strftime("%H%M%S"),
        "msisdn": "+4915112345678", "status": "0x4503 unknown subscriber" if bounce else "delivered"})


def build_client(database_url: str):
    """Return the production-configured app and its test client on the bench database."""
    import os

    os.environ.update(app_env(database_url))
    from app import create_app

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    # The app logs to the stdout it finds at start-up: a file, as under gunicorn, not this table.
    log_file = open(LOG_DIR / "profile-app.log", "w")  # noqa: SIM115 (open for the process's lifetime)
    with contextlib.redirect_stdout(log_file):
        app = create_app()
    return app, app.test_client()


def time_receipts(client, requests: int, prefix: str) -> float:
    """Send receipts without the profiler and return milliseconds per receipt."""
    started = time.perf_counter()
    for number in range(requests):
        assert receipt(client, number, prefix).status_code == 200
    return (time.perf_counter() - started) * 1000 / requests


def profile(client, requests: int, prefix: str) -> pstats.Stats:
    """Send receipts under cProfile and return the stats."""
    profiler = cProfile.Profile()
    profiler.enable()
    for number in range(requests):
        assert receipt(client, number, prefix).status_code == 200
    profiler.disable()
    return pstats.Stats(profiler)


def round_trips(database: BenchDatabase, client, requests: int, prefix: str) -> StatementLog:
    """Return the statements PostgreSQL received for the receipts, with their server time."""
    return database.statements_during(lambda: [receipt(client, number, prefix) for number in range(requests)])


def layer_shares(stats: pstats.Stats) -> dict[str, float]:
    """Return each layer's share of the profiled own time, largest first."""
    totals: Counter[str] = Counter()
    for function, (_, _, own_time, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        totals[layer_of(function)] += own_time
    grand_total = sum(totals.values()) or 1.0
    return {layer: seconds / grand_total for layer, seconds in totals.most_common()}


def top_functions(stats: pstats.Stats, count: int = 15) -> list[str]:
    """Return the functions with the most own time, as `share  file:line(name)`."""
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)  # type: ignore[attr-defined]
    grand_total = sum(row[1][2] for row in rows) or 1.0
    return [f"{own / grand_total:6.1%}  {calls:>8} calls  {_short(function)}"
            for function, (_, calls, own, _, _) in rows[:count]]


def _short(function: tuple[str, int, str]) -> str:
    filename, line, name = function
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    return f"{filename}:{line}({name})" if filename != "~" else name


def cumulative(stats: pstats.Stats, requests: int) -> dict[str, float]:
    """Return milliseconds per receipt spent inside each function of the ingest path (with callees)."""
    shares = {}
    for (filename, line, name), (_, _, _, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith(("services/ingest.py", "routes/vendors.py")) and not name.startswith("<"):
            shares[f"ms in {Path(filename).parent.name}/{Path(filename).name}:{name} (cumulative)"] = (
                total * 1000 / requests)
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def main() -> None:
    """Profile the ingest path and report the layers, round trips per receipt and hot functions."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    prefix = uuid.uuid4().hex[:8]
    try:
        _, client = build_client(database.url)
        time_receipts(client, 200, f"warm-{prefix}")  # statement cache, pool, lazy imports
        plain_ms = time_receipts(client, args.requests, f"plain-{prefix}")
        stats = profile(client, args.requests, f"prof-{prefix}")
        trips = round_trips(database, client, 200, f"trips-{prefix}")
    finally:
        database.stop()
    figures: dict[str, object] = {
        "receipts profiled": args.requests, "ms per receipt in-process (no profiler)": plain_ms,
        "round trips per receipt": trips.total / 200,
        "PostgreSQL server ms per receipt (parse, plan, execute)": trips.total_server_ms / 200}
    figures.update({f"round trips per receipt: {word}": count / 200 for word, count in trips.counts.most_common()})
    figures.update({f"share: {layer}": round(share, 3) for layer, share in layer_shares(stats).items()})
    figures.update({name: round(ms, 3) for name, ms in cumulative(stats, args.requests).items()})
    report(Result("ingest_profile", f"Where one receipt's time goes ({args.requests} receipts, cProfile)",
                  figures, checks=[], notes=top_functions(stats)))


if __name__ == "__main__":
    main()
