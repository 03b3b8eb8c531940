"""Retention: expired rows go in bounded batches, recent rows and dead letters stay, dry runs only count."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, func, insert, select, text, update

from models import (Bounce, InboundMessageRecord, MessageState, OutboundMessage, OutboxItem, RawEvent,
                    StatusCursor, db)
from services.clock import utcnow
from services.outbox import replay_dead_letters
from services.retention import RULES, RetentionJob, purge
from services.worker import Worker
from tests.records import ensure_client
from tests.test_cli_outbox import CLIENT_A, add_report_item, add_state

RETENTION = timedelta(days=30)
CLIENT_ID = uuid.uuid4()

# Which column carries each test row's name, so a test can list the survivors by name.
NAME_COLUMNS = {
    "raw_events": RawEvent.vendor_message_id,
    "bounces": Bounce.message_id,
    "message_states": MessageState.vendor_message_id,
    "inbound_messages": InboundMessageRecord.vendor_message_id,
    "outbox": OutboxItem.message_key,
    "outbound_messages": OutboundMessage.emarsys_message_id,
    "status_cursors": StatusCursor.source_system,
}


def raw_event(name: str, received_at: datetime) -> RawEvent:
    """Return a raw event received at the given time."""
    return RawEvent(vendor="genesys", kind="delivery_report", vendor_message_id=name,
                    fingerprint=uuid.uuid4().hex, params={"id": name}, received_at=received_at)


def message_state(name: str, updated_at: datetime) -> MessageState:
    """Return a delivery state last updated at the given time."""
    return MessageState(vendor="genesys", vendor_message_id=name, recipient="+4915112345678",
                        outcome="FAILED", rank=3, status_code="8", status_text="failed",
                        event_at=updated_at, updated_at=updated_at)


def add_bounce(state: MessageState, event_at: datetime) -> None:
    """Add the state's bounce record, for an event at the given time."""
    db.session.flush()
    db.session.add(Bounce(message_state_id=state.id, message_id=state.vendor_message_id,
                          recipient="+4915112345678", status_code="8", status_text="failed",
                          type="Permanent", event_at=event_at, seq=1))


def outbox_item(name: str, state: str, created_at: datetime) -> OutboxItem:
    """Return an outbox item in the given state, created at the given time."""
    return OutboxItem(client_id=CLIENT_ID, kind="delivery_report", message_key=name, payload={"id": name},
                      event_at=created_at, state=state, attempts=1, next_attempt_at=created_at,
                      created_at=created_at)


def outbound_message(name: str, state: str, updated_at: datetime) -> OutboundMessage:
    """Return a campaign message in the given state, last touched at the given time."""
    return OutboundMessage(public_id=uuid.uuid4().hex, client_id=CLIENT_ID, emarsys_message_id=name,
                           source="ACME", destination="+4915112345678", body="Hello", state=state,
                           attempts=1, next_attempt_at=updated_at, created_at=updated_at,
                           updated_at=updated_at)


def seed_world(now: datetime) -> None:
    """Store rows on both sides of the retention cutoff in every purged table, and commit."""
    old, recent = now - RETENTION - timedelta(days=1), now - RETENTION + timedelta(days=1)
    db.session.add_all([raw_event("old", old), raw_event("recent", recent)])
    db.session.add_all([InboundMessageRecord(vendor="genesys", vendor_message_id=name, source="+4915112345678",
                                             destination="12345", body="STOP", received_at=when)
                        for name, when in (("old", old), ("recent", recent))])
    for name, updated, bounce_at in (("old", old, old), ("old-no-bounce", old, None),
                                     ("old-recent-bounce", old, recent), ("recent", recent, recent)):
        state = message_state(name, updated)
        db.session.add(state)
        if bounce_at is not None:
            add_bounce(state, bounce_at)
    db.session.add_all([outbox_item(f"{state}-old", state, old) for state in ("done", "dead", "pending", "leased")])
    db.session.add(outbox_item("done-recent", "done", recent))
    db.session.add_all([outbound_message(f"{state}-old", state, old)
                        for state in ("sent", "failed", "cancelled", "queued", "sending")])
    db.session.add(outbound_message("sent-recent", "sent", recent))
    cursor_ages = {"two-days": timedelta(days=2), "an-hour": timedelta(hours=1)}
    db.session.add_all([StatusCursor(window_start=now, window_end=now, source_system=name, page=1, snapshot_seq=1,
                                     created_at=now - age) for name, age in cursor_ages.items()])
    db.session.commit()


def names(table: str) -> set[str]:
    """Return the names of the rows left in a table."""
    return set(db.session.scalars(select(NAME_COLUMNS[table])))


def row_counts() -> dict[str, int]:
    """Return how many rows each purged table holds."""
    return {table: db.session.scalar(select(func.count()).select_from(column.class_))
            for table, column in NAME_COLUMNS.items()}


@pytest.fixture
def context(app) -> Iterator[datetime]:
    """Enter an app context and return the current time."""
    with app.app_context():
        yield utcnow()


@pytest.mark.parametrize("table, survivors", [
    ("raw_events", {"recent"}),
    ("bounces", {"old-recent-bounce", "recent"}),
    ("message_states", {"old-recent-bounce", "recent"}),
    ("inbound_messages", {"recent"}),
    ("outbox", {"dead-old", "pending-old", "leased-old", "done-recent"}),
    ("outbound_messages", {"queued-old", "sending-old", "sent-recent"}),
    ("status_cursors", {"an-hour"}),
])
def test_purge_deletes_expired_rows_and_keeps_recent_ones_and_dead_letters(context, table, survivors):
    seed_world(context)
    purge(context - RETENTION, batch_size=100, now=context)
    assert names(table) == survivors


@pytest.mark.parametrize("pulled, kept", [(False, True), (True, False)])
def test_a_late_report_keeps_its_old_bounce_until_sap_pulled_it(context, pulled, kept):
    # Stored today about an event older than the retention: SAP has not seen it yet.
    state = message_state("late", context)
    db.session.add(state)
    add_bounce(state, context - RETENTION - timedelta(days=5))
    db.session.flush()
    if pulled:
        db.session.execute(db.update(Bounce).values(pulled_at=context))
    db.session.commit()

    purge(context - RETENTION, batch_size=100, now=context)

    assert (names("bounces") == {"late"}) is kept
    assert names("message_states") == {"late"}


def test_purge_reports_rows_deleted_per_table(context):
    seed_world(context)
    results = {result.table: result.rows for result in purge(context - RETENTION, batch_size=100, now=context)}
    assert results == {"status_cursors": 1, "raw_events": 1, "bounces": 1, "message_states": 2,
                       "inbound_messages": 1, "outbox": 1, "outbound_messages": 3}


def test_dry_run_counts_what_would_go_and_deletes_nothing(context):
    seed_world(context)
    before = row_counts()
    dry = {result.table: result.rows for result in purge(context - RETENTION, 100, dry_run=True, now=context)}
    assert row_counts() == before
    real = {result.table: result.rows for result in purge(context - RETENTION, 100, now=context)}
    assert dry == real


def test_each_batch_deletes_at_most_batch_size_rows_in_its_own_transaction(context):
    old = context - RETENTION - timedelta(days=1)
    db.session.add_all([raw_event(f"e{index}", old) for index in range(35)])
    db.session.commit()
    steps: list[str | int] = []

    def on_execute(conn, cursor, statement, parameters, ctx, executemany):
        if statement.startswith("DELETE FROM raw_events"):
            steps.append(cursor.rowcount)

    event.listen(db.engine, "after_cursor_execute", on_execute)
    event.listen(db.engine, "commit", lambda conn: steps.append("commit"))
    try:
        [result] = [r for r in purge(context - RETENTION, batch_size=10, now=context) if r.table == "raw_events"]
    finally:
        event.remove(db.engine, "after_cursor_execute", on_execute)
    deletes = [step for step in steps if step != "commit"]
    assert (result.rows, result.batches, deletes) == (35, 4, [10, 10, 10, 5])
    for index, step in enumerate(steps[:-1]):
        if step != "commit":
            assert steps[index + 1] == "commit"  # no two batches share a transaction


def test_max_batches_stops_early_and_says_so(context):
    old = context - RETENTION - timedelta(days=1)
    db.session.add_all([raw_event(f"e{index}", old) for index in range(35)])
    db.session.commit()
    [result] = [r for r in purge(context - RETENTION, 10, max_batches=2, now=context) if r.table == "raw_events"]
    assert (result.rows, result.batches, result.finished) == (20, 2, False)
    assert row_counts()["raw_events"] == 15


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_worker_job_purges_at_most_once_per_interval(context):
    clock = FakeClock()
    job = RetentionJob(RETENTION, batch_size=100, max_batches=10, interval_seconds=300, clock=clock)
    old = context - RETENTION - timedelta(days=1)
    db.session.add(raw_event("first", old))
    db.session.commit()
    assert job.run_once() == 1
    db.session.add(raw_event("second", old))
    db.session.commit()
    clock.now += 299
    assert (job.run_once(), names("raw_events")) == (0, {"second"})
    clock.now += 1
    assert (job.run_once(), names("raw_events")) == (1, set())


def test_worker_job_with_a_backlog_carries_on_next_round(context):
    clock = FakeClock()
    job = RetentionJob(RETENTION, batch_size=10, max_batches=1, interval_seconds=300, clock=clock)
    db.session.add_all([raw_event(f"e{index}", context - RETENTION - timedelta(days=1)) for index in range(15)])
    db.session.commit()
    assert [job.run_once(), job.run_once(), job.run_once()] == [10, 5, 0]


def test_worker_runs_the_retention_job(app):
    worker = Worker.from_app(app)
    assert any(isinstance(getattr(job, "__self__", None), RetentionJob) for job in worker.jobs)


def test_retention_days_from_config_sets_the_cutoff(make_app):
    app = make_app(RETENTION_DAYS=45, PURGE_INTERVAL_SECONDS=0)
    with app.app_context():
        now = utcnow()
        db.session.add_all([raw_event("40-days", now - timedelta(days=40)),
                            raw_event("50-days", now - timedelta(days=50))])
        db.session.commit()
        assert RetentionJob.from_config(app.config).run_once() == 1
        assert names("raw_events") == {"40-days"}


@pytest.mark.parametrize("args, deleted, left", [
    (["purge", "--dry-run"], 1, {"old", "recent"}),
    (["purge"], 1, {"recent"}),
    (["purge", "--older-than", "45d"], 0, {"old", "recent"}),
    (["purge", "--older-than", "12h", "--batch-size", "1"], 2, set()),
])
def test_purge_command_prints_counts_per_table(app, context, args, deleted, left):
    seed_world(context)
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    rows = dict(line.split() for line in result.output.splitlines()[2:])
    assert int(rows["raw_events"]) == deleted
    assert set(rows) == set(NAME_COLUMNS) | {"total"}
    db.session.rollback()
    assert names("raw_events") == left


def test_dry_run_says_would_delete(app, context):
    result = app.test_cli_runner().invoke(args=["purge", "--dry-run"])
    assert "would delete" in result.output


@pytest.mark.parametrize("age", ["soon", "0d", "-3d", "30", "30.0",  # "30" would be 30 seconds: nearly everything
                                 "999999d", "9999999999d"])  # before the year 1
def test_purge_command_refuses_a_bad_age(app, age):
    result = app.test_cli_runner().invoke(args=["purge", "--older-than", age])
    assert result.exit_code == 2
    assert "--older-than" in result.output


@pytest.mark.parametrize("size", ["0", "99999999999999999999"])  # the second, more than a SQL LIMIT takes
def test_purge_command_refuses_a_batch_size_that_is_no_row_count(app, size):
    result = app.test_cli_runner().invoke(args=["purge", "--dry-run", "--batch-size", size])
    assert result.exit_code == 2
    assert "Invalid value for '--batch-size'" in result.output


def test_a_dead_letter_keeps_its_messages_state_so_a_replay_after_retention_stays_superseded(context):
    # The reviewer's case: ACCEPTED refused by Emarsys, DELIVERED reached it a day later, both
    # long ago. The done row goes with retention; the state must stay to keep ACCEPTED dead.
    add_report_item("dead", "em-7", at=context - timedelta(days=40))
    add_report_item("done", "em-7", at=context - timedelta(days=39))
    add_state("em-7", at=context - timedelta(days=39))
    # Purged as before: a message whose dead item is an inbound message, or another client's.
    ensure_client(CLIENT_ID)
    for key, column, other in (("em-8", "kind", "inbound_message"), ("em-9", "client_id", CLIENT_ID)):
        add_report_item("dead", key, at=context - timedelta(days=40))
        db.session.execute(db.update(OutboxItem).where(OutboxItem.message_key == key).values({column: other}))
        add_state(key, at=context - timedelta(days=39))

    purge(context - RETENTION, batch_size=100, now=context)

    assert set(db.session.scalars(select(MessageState.emarsys_message_id))) == {"em-7"}
    assert set(db.session.scalars(select(OutboxItem.state))) == {"dead"}
    replay_dead_letters(now=context)
    assert set(db.session.scalars(select(OutboxItem.message_key).where(OutboxItem.state == "dead"))) == {"em-7"}


def test_a_replayed_report_that_dies_again_stays_behind_the_one_sent_after_it(context):
    # Both reports of a message died long ago and were replayed; the purge runs while they wait.
    add_report_item("dead", "em-1", at=context - timedelta(days=40), status="ACCEPTED")
    add_report_item("dead", "em-1", at=context - timedelta(days=39), status="DELIVERED")
    add_state("em-1", at=context - timedelta(days=39))
    assert replay_dead_letters(now=context) == 2
    purge(context - RETENTION, batch_size=100, now=context)
    # Emarsys then refuses ACCEPTED by name and takes DELIVERED, whose done row retention purges.
    accepted, delivered = db.session.scalars(select(OutboxItem.id).order_by(OutboxItem.id)).all()
    db.session.execute(update(OutboxItem).where(OutboxItem.id == accepted).values(state="dead"))
    db.session.execute(update(OutboxItem).where(OutboxItem.id == delivered).values(state="done", sent_at=context))
    db.session.commit()
    purge(context - RETENTION, batch_size=100, now=context)

    assert db.session.scalar(select(MessageState.emarsys_message_id)) == "em-1"
    assert replay_dead_letters(now=context) == 0  # ACCEPTED must not reach Emarsys after DELIVERED


def test_the_dead_letter_check_reads_the_outbox_through_an_index_not_a_scan(context):
    # Done rows pile up until retention: a purge batch must not read the whole outbox. The planner
    # may probe per state (ix_outbox_client_order) or hash the few dead rows (ix_outbox_due).
    old = context - RETENTION - timedelta(days=1)
    db.session.execute(insert(OutboxItem), [
        dict(client_id=CLIENT_A, kind="delivery_report", message_key=f"em-{index}", payload={}, event_at=old,
             state="done" if index % 500 else "dead", attempts=0, next_attempt_at=old, created_at=old)
        for index in range(20000)])
    db.session.execute(insert(MessageState), [
        dict(vendor="genesys", vendor_message_id=f"v-{index}", client_id=CLIENT_A, emarsys_message_id=f"em-{index}",
             outcome="DELIVERED", rank=3, status_code="2", status_text="delivered", event_at=old, updated_at=old)
        for index in range(200)])
    db.session.commit()
    db.session.execute(text("ANALYZE outbox"))
    db.session.execute(text("ANALYZE message_states"))
    rule = next(rule for rule in RULES if rule.model is MessageState)
    query = (select(MessageState.id).where(rule.due(context - RETENTION, context)).limit(100)
             .with_for_update(skip_locked=True))
    sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
    plan = "\n".join(db.session.scalars(text("EXPLAIN " + sql)))
    db.session.rollback()

    assert "Seq Scan on outbox" not in plan, plan
    assert "using ix_outbox_client_order on outbox" in plan or "using ix_outbox_due on outbox" in plan, plan
