"""`flask outbox status|dead|replay` against PostgreSQL."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import click
import pytest
from sqlalchemy import create_engine, delete, insert, select, text

import cli
from models import Client, MessageState, OutboxItem, db
from services.clients import delete_client
from services.clock import utcnow
from services.outbox import count_dead_letters, parse_since
from tests.pg import free_port
from tests.records import ensure_client

CLIENT_A = uuid.UUID("39a281c7-942f-49a9-91c2-8f0dba750f7f")
CLIENT_B = uuid.UUID("5b0e6c55-2f3e-4c1e-9d8e-0a1b2c3d4e5f")
PRIVATE_BODY = "your code is 123456"


def add_item(state: str, client_id: uuid.UUID = CLIENT_A, age: timedelta = timedelta(0), attempts: int = 0,
             last_error: str | None = None, key: str = "em-1") -> None:
    """Insert one outbox row of an inbound message whose body must never be printed."""
    ensure_client(client_id)
    created_at = utcnow() - age
    payload = {"messageId": key, "source": "4367", "destination": "12345", "message": PRIVATE_BODY,
               "receivedAt": "2026-01-01T00:00:00Z"}
    db.session.execute(insert(OutboxItem).values(
        client_id=client_id, kind="inbound_message", message_key=key, payload=payload, event_at=created_at,
        state=state, attempts=attempts, next_attempt_at=created_at + timedelta(days=1), created_at=created_at,
        last_error=last_error, first_attempt_at=created_at))
    db.session.commit()


def run(app, *args: str):
    """Invoke `flask outbox <args>` and return the result."""
    return app.test_cli_runner().invoke(args=["outbox", *args])


def test_status_prints_counts_by_state_and_the_oldest_pending_age(app):
    with app.app_context():
        add_item("pending", age=timedelta(hours=2, minutes=5))
        add_item("pending", key="em-2")
        add_item("leased", key="em-3")
        add_item("done", age=timedelta(days=9), key="em-4")
        for number in range(3):
            add_item("dead", key=f"em-d{number}")

    result = run(app, "status")

    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if line.strip()}
    assert (lines["pending"], lines["leased"], lines["done"], lines["dead"]) == ("2", "1", "1", "3")
    assert "oldest pending: 2h 5m" in result.output


def test_status_of_an_empty_outbox_says_nothing_is_pending(app):
    result = run(app, "status")

    assert result.exit_code == 0
    assert "oldest pending: none" in result.output


def test_dead_lists_dead_letters_without_message_bodies(app):
    with app.app_context():
        add_item("dead", attempts=4, last_error="HTTP 404: client does not exist at Emarsys", key="mo-9")
        add_item("pending", key="mo-10")
        dead_id = db.session.scalar(select(OutboxItem.id).where(OutboxItem.state == "dead"))

    result = run(app, "dead")

    assert result.exit_code == 0, result.output
    [row] = [line.split("\t") for line in result.output.splitlines()[1:-1]]
    assert row == [str(dead_id), str(CLIENT_A), "inbound_message", "mo-9", "4",
                   "HTTP 404: client does not exist at Emarsys"]
    assert "1 of 1 dead letter(s) shown" in result.output
    assert PRIVATE_BODY not in result.output


def test_dead_masks_phone_numbers_an_emarsys_error_quoted(app):
    with app.app_context():
        add_item("dead", attempts=1, last_error="HTTP 400: destination +4915112345678 is invalid")

    result = run(app, "dead")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].endswith("HTTP 400: destination +*********5678 is invalid")


# (arguments, items replayed): A has a dead letter from 3 days ago and one from now, B one from now.
REPLAYS = [
    ((), 3),
    (("--client", str(CLIENT_A)), 2),
    (("--client", str(CLIENT_B)), 1),
    (("--since", "2h"), 2),
    (("--client", str(CLIENT_A), "--since", "1d"), 1),
    (("--since", "2000-01-01T00:00"), 3),
    (("--since", "2999-01-01T00:00"), 0),
]


@pytest.mark.parametrize("arguments, replayed", REPLAYS)
def test_replay_requeues_the_chosen_dead_letters(app, arguments, replayed):
    with app.app_context():
        add_item("dead", CLIENT_A, age=timedelta(days=3), attempts=7, last_error="gave up", key="a-old")
        add_item("dead", CLIENT_A, attempts=1, last_error="HTTP 403", key="a-new")
        add_item("dead", CLIENT_B, attempts=1, last_error="HTTP 404", key="b-new")
        add_item("done", CLIENT_A, key="a-done")
        before = utcnow()

    result = run(app, "replay", *arguments)

    assert result.exit_code == 0, result.output
    assert f"replayed {replayed} dead letter(s)" in result.output
    with app.app_context():
        requeued = db.session.scalars(select(OutboxItem).where(OutboxItem.state == "pending")).all()
        assert len(requeued) == replayed
        for item in requeued:
            assert item.attempts == 0 and item.first_attempt_at is None and item.next_attempt_at >= before
        assert db.session.scalar(select(OutboxItem.state).where(OutboxItem.message_key == "a-done")) == "done"


def test_deleting_a_client_drops_its_dead_letters_so_none_holds_the_count_up(app):
    with app.app_context():
        add_item("dead", CLIENT_A, key="a-dead")
        add_item("dead", CLIENT_B, key="b-dead")
        delete_client(CLIENT_B)  # no replay could deliver them: Emarsys knows the client no more
        assert count_dead_letters() == 1

    assert "replayed 1 dead letter(s)" in run(app, "replay").output


def test_a_dead_letter_left_by_a_client_deleted_before_is_kept_by_replay_and_discarded(app):
    with app.app_context():
        add_item("dead", CLIENT_A, key="a-dead")
        add_item("dead", CLIENT_B, key="b-dead")
        # Deleted by an earlier version, which kept the client's dead letters.
        db.session.execute(delete(Client).where(Client.id == CLIENT_B))
        db.session.commit()

    replayed = run(app, "replay")
    discarded = run(app, "discard-superseded")

    assert "replayed 1 dead letter(s)" in replayed.output and "of a deleted client" in replayed.output
    assert "discarded 1 superseded dead letter(s)" in discarded.output
    with app.app_context():
        states = db.session.execute(select(OutboxItem.message_key, OutboxItem.state)).all()
        assert states == [("a-dead", "pending")]


def test_replay_leaves_dead_a_report_whose_message_already_reached_emarsys_with_a_later_one(app):
    with app.app_context():
        add_item("dead", age=timedelta(days=3), key="superseded")
        add_item("done", age=timedelta(days=1), key="superseded")  # a later report, delivered
        add_item("done", age=timedelta(days=4), key="still-newest")  # an earlier report, delivered
        add_item("dead", age=timedelta(days=3), key="still-newest")

    result = run(app, "replay")

    assert result.exit_code == 0 and "replayed 1 dead letter(s)" in result.output
    assert "1 dead letter(s) left" in result.output
    with app.app_context():
        states = db.session.execute(select(OutboxItem.message_key, OutboxItem.state)
                                    .where(OutboxItem.state != "done")).all()
        assert sorted(states) == [("still-newest", "pending"), ("superseded", "dead")]


def add_report_item(state: str, key: str, at: datetime, status: str = "DELIVERED") -> None:
    """Insert one delivery report of Emarsys message `key`, of an event at `at`, into the outbox."""
    ensure_client(CLIENT_A)
    db.session.execute(insert(OutboxItem).values(
        client_id=CLIENT_A, kind="delivery_report", message_key=key,
        payload={"emarsysMessageId": key, "status": status},
        event_at=at, state=state, attempts=0, next_attempt_at=at, created_at=at))
    db.session.commit()


def add_state(key: str, at: datetime, outcome: str = "DELIVERED") -> None:
    """Record that Emarsys message `key` last took an event at `at` (of rank 3: DELIVERED or HARDBOUNCE)."""
    db.session.add(MessageState(vendor="genesys", vendor_message_id=f"v-{key}", client_id=CLIENT_A,
                                emarsys_message_id=key, outcome=outcome, rank=3, status_code="2",
                                status_text="delivered", event_at=at, updated_at=at))
    db.session.commit()


def test_replay_leaves_dead_a_report_behind_a_later_one_still_on_its_way_or_long_purged(app):
    now = utcnow()
    with app.app_context():
        add_report_item("dead", "later-pending", at=now - timedelta(days=3))
        add_report_item("pending", "later-pending", at=now - timedelta(days=1))  # would go first
        add_report_item("dead", "later-purged", at=now - timedelta(days=40))
        add_state("later-purged", at=now - timedelta(days=39))  # its done row is purged, the state is not
        add_report_item("dead", "newest", at=now - timedelta(days=40))
        add_state("newest", at=now - timedelta(days=40))  # this very report is the message's latest
        add_report_item("dead", "both-dead", at=now - timedelta(days=41))  # replayed, then
        add_report_item("dead", "both-dead", at=now - timedelta(days=40))  # the latest, both in order
        add_state("both-dead", at=now - timedelta(days=40))

    result = run(app, "replay")

    assert result.exit_code == 0 and "replayed 3 dead letter(s)" in result.output
    with app.app_context():
        dead = db.session.scalars(select(OutboxItem.message_key).where(OutboxItem.state == "dead")).all()
        assert sorted(dead) == ["later-pending", "later-purged"]


def test_replay_leaves_dead_a_report_its_message_changed_after_even_with_an_earlier_event_time(app):
    now = utcnow()
    with app.app_context():
        add_report_item("dead", "overtaken", at=now - timedelta(minutes=1), status="ACCEPTED")
        # Then DELIVERED, timestamped on arrival a little before it and stored by a web process whose
        # clock read earlier still (before it waited for the state's lock); its done row long purged.
        add_state("overtaken", at=now - timedelta(minutes=1, milliseconds=5))
        state = db.session.scalars(select(MessageState)).one()
        state.updated_at = now - timedelta(minutes=2)
        db.session.commit()

    result = run(app, "replay")

    assert result.exit_code == 0 and "replayed 0 dead letter(s)" in result.output


def test_replay_leaves_dead_a_report_its_message_moved_sideways_from_at_the_same_rank_and_time(app):
    now = utcnow()
    with app.app_context():
        add_report_item("dead", "sideways", at=now, status="DELIVERED")
        add_state("sideways", at=now, outcome="HARDBOUNCE")  # the same rank, the same event time

    result = run(app, "replay")

    assert result.exit_code == 0 and "replayed 0 dead letter(s)" in result.output


@pytest.mark.parametrize("arguments", [("--since", "yesterday"), ("--client", "not-a-uuid"),
                                       ("--since", "999999d"), ("--since", "9999999999d")])  # before the year 1
def test_replay_refuses_bad_arguments(app, arguments):
    result = run(app, "replay", *arguments)

    assert result.exit_code == 2
    assert "Invalid value" in result.output


@pytest.mark.parametrize("limit", ["0", "99999999999999999999"])  # the second, more than a SQL LIMIT takes
def test_dead_refuses_a_limit_that_is_no_row_count(app, limit):
    result = run(app, "dead", "--limit", limit)

    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.output


NOW = datetime(2026, 3, 1, 12, 0, 0)


@pytest.mark.parametrize("text, expected", [
    ("2h", NOW - timedelta(hours=2)),
    ("3d", NOW - timedelta(days=3)),
    ("90s", NOW - timedelta(seconds=90)),
    ("20260101", datetime(2026, 1, 1)),  # a date, not 234 days of seconds
    ("2026-01-01T00:00", datetime(2026, 1, 1)),
    ("2026-01-01", datetime(2026, 1, 1)),
    ("2026-01-01T02:00+02:00", datetime(2026, 1, 1)),
])
def test_since_takes_an_iso_time_in_utc_or_an_age(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["last week", "90", "1.5"])
def test_since_rejects_other_text_and_an_age_without_a_unit(text):
    with pytest.raises(ValueError, match="ISO time"):
        parse_since(text, NOW)


def test_discard_superseded_deletes_only_the_dead_letters_replay_leaves_dead(app):
    now = utcnow()
    with app.app_context():
        add_report_item("dead", "later-sent", at=now - timedelta(days=3))
        add_report_item("done", "later-sent", at=now - timedelta(days=1))  # a later report reached Emarsys
        add_report_item("dead", "later-purged", at=now - timedelta(days=40))
        add_state("later-purged", at=now - timedelta(days=39))  # its done row is purged, the state is not
        add_report_item("dead", "newest", at=now - timedelta(days=40))
        add_state("newest", at=now - timedelta(days=40))  # this very report is the message's latest

    result = run(app, "discard-superseded")

    assert result.exit_code == 0 and "discarded 2 superseded dead letter(s)" in result.output
    assert "1 dead letter(s) left" in result.output
    with app.app_context():
        dead = db.session.scalars(select(OutboxItem.message_key).where(OutboxItem.state == "dead")).all()
        assert dead == ["newest"]
        assert db.session.scalars(select(OutboxItem.message_key).where(OutboxItem.state == "done")).all() == [
            "later-sent"]


@pytest.mark.parametrize("command", [["outbox", "status"], ["outbox", "dead"], ["outbox", "replay"],
                                     ["outbox", "discard-superseded"], ["purge", "--dry-run"]])
def test_a_database_it_cannot_reach_stops_a_command_with_one_line(make_app, command):
    port = free_port()  # nothing listens there
    app = make_app(SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg2://ops:db-S3cret@127.0.0.1:{port}/d")

    with app.app_context():  # as `flask` pushes one for every command
        result = app.test_cli_runner().invoke(args=command)

    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f'Error: database unreachable: connection to server at "127.0.0.1", port {port} failed: Connection refused')
    assert "Traceback" not in result.output and "db-S3cret" not in result.output


def test_a_database_error_stops_a_command_with_one_line_naming_it(make_app, postgres):
    app = make_app(SQLALCHEMY_DATABASE_URI=postgres.url)  # reachable, but never migrated

    result = app.test_cli_runner().invoke(args=["outbox", "status"])

    assert result.exit_code == 1
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith('Error: database error: relation "outbox" does not exist')


def test_a_statement_timeout_is_a_database_error_not_an_unreachable_database(make_app, database_url):
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"options": "-c statement_timeout=200"}})
    blocker = create_engine(database_url).connect()
    blocker.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
    try:
        with app.app_context():
            result = app.test_cli_runner().invoke(args=["outbox", "status"])
    finally:
        blocker.rollback()
        blocker.close()

    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: database error: canceling statement due to statement timeout")


def test_every_option_of_the_services_commands_says_what_it_does():
    commands = [cli.worker_command, cli.db_upgrade_locked_command, cli.purge_command,
                *cli.outbox_group.commands.values()]
    silent = [f"{command.name} {option.opts[0]}" for command in commands for option in command.params
              if isinstance(option, click.Option) and not option.help]
    assert silent == []
