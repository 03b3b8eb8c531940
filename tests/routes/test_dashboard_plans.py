"""The dashboard's queries probe indexes instead of reading every retained row (PostgreSQL plans)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, text

from models import db
from services import dashboard

ADMIN = ("operator", "dash-Pa55-word")
ROWS = 4000
# Tables that grow with retained traffic; a scan of any of them grows the page's time with it.
BIG_TABLES = ("outbox", "message_states", "bounces", "outbound_messages", "raw_events")
SCAN = re.compile(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan)(?: Backward)?"
                  r"(?: using (\w+))? on (?:\w+\.)?(\w+)")

# Retained history as a busy week leaves it: done outbox rows of three clients, states of two
# vendors (half an Emarsys client's), pulled bounces, sent campaign messages and old raw events.
LOAD = [
    f"""INSERT INTO outbox (client_id, kind, message_key, payload, event_at, state, attempts, next_attempt_at,
                         created_at, sent_at)
        SELECT (ARRAY['0d3c8f4e-6a0b-4c55-9d1e-3f2a1b4c5d6e', '39a281c7-942f-49a9-91c2-8f0dba750f7f',
                      '5b0e6c55-2f3e-4c1e-9d8e-0a1b2c3d4e5f'])[1 + g % 3]::uuid,
               'delivery_report', 'em-' || g, '{{}}', now() - g * interval '1 minute',
               CASE WHEN g % 1000 = 1 THEN 'pending' WHEN g % 1000 = 2 THEN 'dead' ELSE 'done' END, 1,
               now(), now() - g * interval '1 minute',
               CASE WHEN g % 1000 > 2 THEN now() - g * interval '1 minute' END
        FROM generate_series(1, {ROWS}) g""",
    f"""INSERT INTO message_states (vendor, vendor_message_id, client_id, emarsys_message_id, outcome, rank,
                                 status_code, status_text, event_at, updated_at)
        SELECT (ARRAY['genesys', 'twilio'])[1 + g % 2], 'v-' || g,
               CASE WHEN g % 2 = 0 THEN '0d3c8f4e-6a0b-4c55-9d1e-3f2a1b4c5d6e'::uuid END,
               CASE WHEN g % 2 = 0 THEN 'em-' || g END, 'HARDBOUNCE', 3, '5', 'x', now(), now()
        FROM generate_series(1, {ROWS}) g""",
    """INSERT INTO bounces (message_state_id, message_id, recipient, status_code, status_text, type, event_at,
                           pulled_at, seq)
       SELECT id, vendor_message_id, '', '5', 'x', (ARRAY['Permanent', 'Temporary'])[1 + id % 2],
              now() - id * interval '1 minute', CASE WHEN id % 100 <> 0 THEN now() END, id
       FROM message_states WHERE emarsys_message_id IS NULL""",
    f"""INSERT INTO outbound_messages (public_id, client_id, emarsys_message_id, source, destination, body,
                                    state, attempts, next_attempt_at, vendor, vendor_message_id, created_at,
                                    updated_at)
        SELECT 'pub-' || g, '0d3c8f4e-6a0b-4c55-9d1e-3f2a1b4c5d6e', 'em-' || g, 'ACME', '+491701234567', 'hi',
               'sent', 1, now(), 'genesys', 'v-' || g, now(), now()
        FROM generate_series(2, {ROWS}, 2) g""",
    f"""INSERT INTO raw_events (vendor, kind, vendor_message_id, fingerprint, params, outcome, received_at)
        SELECT 'genesys', 'delivery_report', 'v-' || g, md5(g::text), '{{}}', 'HARDBOUNCE',
               now() - interval '3 days' - g * interval '1 second'
        FROM generate_series(1, {ROWS}) g""",
]


@pytest.fixture
def loaded_admin_app(make_app):
    """Return the dashboard-enabled service on tables holding a few thousand retained rows, analysed."""
    app = make_app(ADMIN_USERNAME=ADMIN[0], ADMIN_PASSWORD=ADMIN[1])
    with app.app_context():
        for statement in LOAD:
            db.session.execute(text(statement))
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
    return app


@contextmanager
def captured_selects(app) -> Iterator[list[tuple[str, object]]]:
    """Collect each SELECT the app sends, with its parameters, while the block runs."""
    statements: list[tuple[str, object]] = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", remember)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", remember)


def plans(app, statements: list[tuple[str, object]]) -> list[tuple[str, str]]:
    """Return each statement with its plan (EXPLAIN, not run)."""
    with app.app_context(), db.engine.connect() as connection:
        cursor = connection.connection.cursor()
        found = []
        for statement, parameters in statements:
            # VERBOSE shows the subplans of a select list too (the loose index scan's steps).
            cursor.execute("EXPLAIN (VERBOSE) " + statement, parameters)
            found.append((statement, "\n".join(row[0] for row in cursor.fetchall())))
        return found


def partial_indexes(app) -> set[str]:
    """Return the names of the indexes that hold only the rows of a condition."""
    with app.app_context():
        return set(db.session.scalars(text("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '% WHERE %'")))


def full_scans(plan: str, partial: set[str]) -> list[str]:
    """Return the plan's nodes that read a big table, or a whole index of all its rows, end to end."""
    lines = plan.splitlines()
    scans = []
    for number, line in enumerate(lines):
        match = SCAN.search(line)
        if not match or match.group(3) not in BIG_TABLES:
            continue
        kind, index = match.group(1), match.group(2)
        details = []
        for detail in lines[number + 1:]:
            if "->" in detail or "SubPlan" in detail or "InitPlan" in detail:
                break
            details.append(detail)
        bounded = any("Index Cond" in detail for detail in details)
        if kind == "Seq Scan" or (index and index not in partial and not bounded):
            scans.append(line.strip())
    return scans


def whole_table_reads(app, found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return (query, scan node) for each node of these plans that reads a big table whole."""
    partial = partial_indexes(app)
    return [(" ".join(statement.split())[:160], scan)
            for statement, plan in found for scan in full_scans(plan, partial)]


def page_plans(app, **params) -> tuple[str, list[tuple[str, str]]]:
    """Fetch the dashboard and return its HTML and the plans of the queries it ran."""
    client = app.test_client()
    with captured_selects(app) as statements:
        response = client.get("/dashboard", query_string=params, auth=ADMIN)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert statements
    return response.get_data(as_text=True), plans(app, statements)


def test_the_dashboards_figures_read_no_big_table_whole(loaded_admin_app):
    html, found = page_plans(loaded_admin_app)

    assert 'id="dead-letters">4<' in html and 'id="outbox-depth">4<' in html
    assert whole_table_reads(loaded_admin_app, found) == []


@pytest.mark.parametrize("searched", ["em-42", "pub-42", "v-42", "v-43"])
def test_a_message_search_probes_an_index_for_every_id_it_looks_up(loaded_admin_app, searched):
    with captured_selects(loaded_admin_app) as statements, loaded_admin_app.app_context():
        history = dashboard.message_history(searched)

    assert history.states and history.raw_events
    assert bool(history.bounces) == (searched == "v-43")  # only SAP traffic's states have bounces here
    assert whole_table_reads(loaded_admin_app, plans(loaded_admin_app, statements)) == []
