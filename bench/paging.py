"""SAP paging benchmark: pages 0, 100 and 5,000 of /status over 1,000,000 bounces in 24 h.

The bounces (with their raw events and message states, seq = raw event id) are bulk-loaded
with INSERT ... SELECT generate_series. SAP pages sequentially, so the benchmark first walks
pages 0..5,000 of one (window, sourceSystem) once, timing every page; then it times pages
0, 100 and 5,000 again in interleaved rounds (later pages start from the position the walk
remembered). For contrast it also times page 5,000 asked for out of the blue (a new
sourceSystem), which has no remembered position and must skip 500,000 rows.

Run: python -m bench.paging [--bounces 1000000] [--last-page 5000] [--repeats 20] [--walk-budget-seconds 240]
"""
from __future__ import annotations

import argparse
import base64
import time
from datetime import datetime, timedelta
from urllib.parse import urlencode

from bench.common import (BenchDatabase, Check, Result, app_env, http_request, median, percentile, report,
                          running, start_gunicorn, wait_until_answers)
from mappers.report import OUTCOME_RANK, Outcome
from services.bounces import SAP_TIME_FORMAT

WINDOW_START = datetime(2026, 1, 1)
WINDOW = timedelta(hours=24)
RATIO_TARGET = 1.5
P50_TARGET_MS = 10.0
AUTH = {"Authorization": "Basic " + base64.b64encode(b"sap-bench:sap-bench-password").decode()}

LOAD_SQL = """
INSERT INTO raw_events (id, vendor, kind, client_id, vendor_message_id, fingerprint, params, received_at)
SELECT g, 'genesys', 'delivery_report', NULL, 'bench-' || g, 'bench-' || g,
       json_build_object('type', 'receipt', 'message_id', 'bench-' || g, 'message_state', '5',
                         'result_code', '1'),
       %(start)s + (g - 1) * %(step_ms)s * interval '1 millisecond'
FROM generate_series(1, %(count)s) AS g;

INSERT INTO message_states (id, vendor, vendor_message_id, client_id, emarsys_message_id, recipient, outcome,
                            error_type, rank, status_code, status_text, event_at, updated_at)
SELECT g, 'genesys', 'bench-' || g, NULL, NULL, '+49151' || lpad(g::text, 8, '0'), 'HARDBOUNCE', NULL,
       %(rank)s, '5:1', 'undeliverable', %(start)s + (g - 1) * %(step_ms)s * interval '1 millisecond',
       %(start)s + (g - 1) * %(step_ms)s * interval '1 millisecond'
FROM generate_series(1, %(count)s) AS g;

INSERT INTO bounces (id, message_state_id, message_id, recipient, status_code, status_text, type, event_at,
                     pulled_at, seq)
SELECT g, g, 'bench-' || g, '+49151' || lpad(g::text, 8, '0'), '5:1', 'undeliverable', 'Permanent',
       %(start)s + (g - 1) * %(step_ms)s * interval '1 millisecond', NULL, g
FROM generate_series(1, %(count)s) AS g;

SELECT setval(pg_get_serial_sequence('raw_events', 'id'), %(count)s);
SELECT setval(pg_get_serial_sequence('message_states', 'id'), %(count)s);
SELECT setval(pg_get_serial_sequence('bounces', 'id'), %(count)s);
"""


def load_bounces(database: BenchDatabase, count: int) -> float:
    """Bulk-load `count` hard bounces spread evenly over the window; return the seconds it took."""
    started = time.monotonic()
    conn = database.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET maintenance_work_mem = '256MB'")
            # The ids are consistent by construction; skipping a million foreign-key checks halves the load.
            cur.execute("SET session_replication_role = replica")
            cur.execute(LOAD_SQL, {"start": WINDOW_START, "step_ms": WINDOW.total_seconds() * 1000 / count,
                                   "count": count, "rank": OUTCOME_RANK[Outcome.HARDBOUNCE]})
            cur.execute("VACUUM ANALYZE raw_events")
            cur.execute("VACUUM ANALYZE message_states")
            cur.execute("VACUUM ANALYZE bounces")
    finally:
        conn.close()
    return time.monotonic() - started


def status_path(page: int, source_system: str) -> str:
    """Return the /status URL of one page of the day's window."""
    return "/status?" + urlencode({"startTimeUTC": WINDOW_START.strftime(SAP_TIME_FORMAT),
                                   "endTimeUTC": (WINDOW_START + WINDOW).strftime(SAP_TIME_FORMAT),
                                   "page": page, "sourceSystem": source_system})


def fetch_page(port: int, page: int, source_system: str) -> tuple[float, bool, int]:
    """Fetch one page; return its milliseconds, whether it is the last page, and its record count."""
    answer = http_request(port, "GET", status_path(page, source_system), headers=AUTH)
    if answer.status != 200:
        raise RuntimeError(f"page {page} answered {answer.status}: {answer.body[:200]!r}")
    body = answer.body.decode()
    return answer.millis, '"lastPage":true' in body.replace(" ", ""), body.count('"messageId"')


def walk(port: int, last_page: int, source_system: str, budget_seconds: float) -> tuple[list[float], int]:
    """Fetch pages 0..last_page in order, as SAP does; return each page's time and the records seen.

    The walk stops early when it exceeds its time budget, so the benchmark stays bounded.
    """
    timings, records = [], 0
    deadline = time.monotonic() + budget_seconds
    for page in range(last_page + 1):
        if time.monotonic() > deadline:
            break
        millis, is_last, count = fetch_page(port, page, source_system)
        timings.append(millis)
        records += count
        if is_last:
            break
    return timings, records


def repeat_pages(port: int, pages: list[int], repeats: int, source_system: str) -> dict[int, list[float]]:
    """Time each page `repeats` times, interleaved, from the positions the walk remembered."""
    timings: dict[int, list[float]] = {page: [] for page in pages}
    for _ in range(repeats):
        for page in pages:
            timings[page].append(fetch_page(port, page, source_system)[0])
    return timings


def measure(database: BenchDatabase, last_page: int, repeats: int, budget_seconds: float) -> dict[str, object]:
    """Walk the pages over HTTP, repeat the three pages, and time out-of-the-blue jumps."""
    process, port = start_gunicorn("paging-app", "wsgi:app", app_env(database.url))
    with running(process):
        wait_until_answers(port, "/health")
        repeat_pages(port, [0, 1, 2], 5, "warm-up")
        walk_started = time.monotonic()
        walk_timings, records = walk(port, last_page, "SAP", budget_seconds)
        walk_seconds = time.monotonic() - walk_started
        reached = len(walk_timings) - 1
        pages = sorted({0, min(100, reached), min(last_page, reached)})
        repeated = repeat_pages(port, pages, repeats, "SAP")
        jumps = [fetch_page(port, min(last_page, reached), f"jump-{n}")[0] for n in range(3)]
        statements = database.statements_during(lambda: fetch_page(port, min(100, reached), "SAP"))
    return {"walk": walk_timings, "records": records, "walk_seconds": walk_seconds,
            "repeated": repeated, "jumps": jumps, "statements": statements}


def paging_figures(measured: dict, count: int, load_seconds: float) -> dict[str, object]:
    """Return the figures of the load, the walk, the repeated pages, the jumps and the statements."""
    walk, repeated = measured["walk"], measured["repeated"]
    reached = max(repeated)
    statements = measured["statements"]
    return {
        "bounces loaded": count, "bulk load seconds": load_seconds,
        "pages walked": len(walk), "records seen in the walk": measured["records"],
        "walk seconds": measured["walk_seconds"], "walk p50 ms (all pages)": median(walk),
        "walk p99 ms (all pages)": percentile(walk, 0.99),
        **{f"page {page} p50 ms": median(times) for page, times in repeated.items()},
        **{f"page {page} p99 ms": percentile(times, 0.99) for page, times in repeated.items()},
        f"page {reached} asked out of the blue (no remembered position), median ms": median(measured["jumps"]),
        "statements per page request": statements.total,
        **{f"statements per page request: {word}": sent for word, sent in statements.counts.most_common()},
        "PostgreSQL server ms per page request": statements.total_server_ms,
    }


def build_result(measured: dict, count: int, last_page: int, load_seconds: float, repeats: int) -> Result:
    """Turn the timings into figures and checks."""
    p50 = {page: median(times) for page, times in measured["repeated"].items()}
    reached, worst_p50 = max(p50), max(p50.values())
    # No ratio when the walk never reached the last page: a page it did reach would flatter it.
    ratio = round(p50[reached] / p50[0], 2) if p50[0] and reached == last_page else None
    checks = [
        Check(f"page {last_page} / page 0 (p50)", ratio, f"<= {RATIO_TARGET}",
              ratio is not None and ratio <= RATIO_TARGET),
        Check(f"p50 ms of pages {', '.join(map(str, p50))} (worst)", worst_p50, f"< {P50_TARGET_MS:g}",
              worst_p50 < P50_TARGET_MS, "ms"),
    ]
    settings = {"bounces": count, "window": "24 h", "page size": 100, "repeats": repeats,
                "client": "one request at a time, new connection each (sync gunicorn closes it)"}
    notes = [] if reached == last_page else [
        f"the sequential walk hit its time budget at page {reached}; page {last_page} was not reached"]
    return Result("paging", f"SAP paging: /status over {count:,} bounces in 24 h",
                  paging_figures(measured, count, load_seconds), checks, settings, notes)


def main() -> None:
    """Start PostgreSQL, bulk-load the bounces, time the pages, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bounces", type=int, default=1_000_000)
    parser.add_argument("--last-page", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--walk-budget-seconds", type=float, default=240)
    args = parser.parse_args()
    database = BenchDatabase()
    database.start(app_env(database.url))
    try:
        load_seconds = load_bounces(database, args.bounces)
        measured = measure(database, args.last_page, args.repeats, args.walk_budget_seconds)
    finally:
        database.stop()
    report(build_result(measured, args.bounces, args.last_page, load_seconds, args.repeats))


if __name__ == "__main__":
    main()
