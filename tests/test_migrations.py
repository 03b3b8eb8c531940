"""The migrations build exactly the schema the models declare, on PostgreSQL and on SQLite."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from models import Bounce, db
from tests.conftest import TEST_SETTINGS


@pytest.mark.parametrize("app_fixture", ["app", "sqlite_app"])
def test_migrated_schema_matches_the_models(request, app_fixture):
    schema_app = request.getfixturevalue(app_fixture)
    with schema_app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        differences = compare_metadata(context, db.metadata)
    # A model changed without a migration (or the reverse) shows here as the DDL it would need.
    assert differences == []


@pytest.fixture(params=["postgresql", "sqlite"])
def unmigrated_url(request, tmp_path):
    """Return the URL of an empty database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    return fresh_postgresql_database(request.getfixturevalue("postgres"), "sms_migration_test")


def fresh_postgresql_database(postgres, name: str) -> str:
    """Create an empty database on the test cluster (dropping one of that name) and return its URL."""
    engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return postgres.database_url(name)


def test_revision_0007_drops_the_sap_bounces_of_emarsys_clients_messages(unmigrated_url):
    app = create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": unmigrated_url})
    with app.app_context():
        upgrade(revision="0006")
        for state_id, client_id in ((1, None), (2, str(uuid.uuid4()))):
            db.session.execute(text(
                "INSERT INTO message_states (id, vendor, vendor_message_id, client_id, outcome, rank, status_code,"
                " status_text, event_at, updated_at) VALUES (:id, 'genesys', :vmid, :client, 'HARDBOUNCE', 2, '5',"
                " 'absent', :now, :now)"), {"id": state_id, "vmid": f"v-{state_id}", "client": client_id,
                                           "now": datetime(2026, 12, 1)})
            db.session.execute(text(
                "INSERT INTO bounces (message_state_id, message_id, recipient, status_code, status_text, type,"
                " event_at, seq) VALUES (:id, :vmid, '', '5', 'absent', 'Permanent', :now, :id)"),
                {"id": state_id, "vmid": f"v-{state_id}", "now": datetime(2026, 12, 1)})
        db.session.commit()

        upgrade()

        assert db.session.scalars(db.select(Bounce.message_id)).all() == ["v-1"]
        db.engine.dispose()


def migrated_app(url: str, revision: str, **settings):
    """Return an app on the database at `url`, migrated to `revision`."""
    app = create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": url, **settings})
    with app.app_context():
        upgrade(revision=revision)
        db.engine.dispose()
    return app


@pytest.fixture
def unmigrated_postgresql_url(postgres):
    """Return the URL of an empty PostgreSQL database."""
    return fresh_postgresql_database(postgres, "sms_lock_test")


def test_a_migration_blocked_by_a_long_transaction_gives_up_instead_of_stalling_the_service(
        unmigrated_postgresql_url):
    app = migrated_app(unmigrated_postgresql_url, "0011", MIGRATION_LOCK_TIMEOUT_MS=200)
    long_transaction = create_engine(unmigrated_postgresql_url).connect()
    long_transaction.execute(text("SELECT count(*) FROM clients"))  # holds the table until it ends
    try:
        started = time.monotonic()
        with app.app_context():
            blocked = app.test_cli_runner().invoke(args=["db-upgrade-locked"])
        waited = time.monotonic() - started
    finally:
        long_transaction.rollback()
        long_transaction.close()

    assert blocked.exit_code != 0 and "stayed locked through 5 attempts" in blocked.output
    assert "(attempt 1 of 5)" in blocked.output and waited < 5
    with app.app_context():
        migrated = app.test_cli_runner().invoke(args=["db-upgrade-locked"])
        assert migrated.exit_code == 0, migrated.output
        # The migrations' lock timeout stays theirs: the app's pooled connections wait as before.
        assert db.session.scalar(text("SHOW lock_timeout")) == "0"
        assert db.session.scalar(text("SELECT version_num FROM alembic_version")) == "0013"
        db.engine.dispose()


OUTBOX_ROW = ("INSERT INTO outbox (client_id, kind, message_key, payload, event_at, state, attempts,"
              " next_attempt_at, created_at) VALUES (:client, 'delivery_report', :key, '{}', now(), 'pending', 0,"
              " now(), now())")


def wait_for_a_waiting_migration(url: str, seconds: float = 10.0) -> None:
    """Return once a session of the database waits on a lock (the migration, behind the open writer)."""
    engine = create_engine(url)
    deadline = time.monotonic() + seconds
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'")).scalar()
            connection.rollback()
            if waiting:
                engine.dispose()
                return
            time.sleep(0.05)
    engine.dispose()
    raise AssertionError("the migration never waited for the open writer")


@pytest.mark.parametrize("before, revision", [("0009", "0010"), ("0012", "0013")])
def test_an_index_migration_leaves_its_table_writable_while_it_builds(unmigrated_postgresql_url, before,
                                                                     revision):
    app = migrated_app(unmigrated_postgresql_url, before, MIGRATION_LOCK_TIMEOUT_MS=30000)
    writers = create_engine(unmigrated_postgresql_url)
    open_writer, next_writer = writers.connect(), writers.connect()
    open_writer.execute(text(OUTBOX_ROW), {"client": str(uuid.uuid4()), "key": "open"})
    failure: list[BaseException] = []

    def migrate() -> None:
        try:
            with app.app_context():
                upgrade(revision=revision)
                db.engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failure.append(exc)

    migration = threading.Thread(target=migrate)
    migration.start()
    try:
        wait_for_a_waiting_migration(unmigrated_postgresql_url)
        # A plain CREATE INDEX queued behind the open writer would hold this insert too.
        next_writer.execute(text("SET statement_timeout = 2000"))
        next_writer.execute(text(OUTBOX_ROW), {"client": str(uuid.uuid4()), "key": "next"})
        next_writer.commit()
    finally:
        open_writer.commit()
        migration.join(timeout=30)
        open_writer.close(), next_writer.close()

    assert not failure and not migration.is_alive()
    with writers.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == revision
        assert connection.execute(text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar() == 0
    writers.dispose()


def test_an_index_build_cut_short_before_is_built_again(unmigrated_postgresql_url):
    app = migrated_app(unmigrated_postgresql_url, "0012")
    engine = create_engine(unmigrated_postgresql_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for key in ("a", "b"):
            connection.execute(text(OUTBOX_ROW), {"client": str(uuid.uuid4()), "key": key})
        # A concurrent build that failed leaves its index behind, invalid, as a cut-short one does.
        with pytest.raises(Exception, match="could not create unique index"):
            connection.execute(text("CREATE UNIQUE INDEX CONCURRENTLY ix_outbox_open_by_id ON outbox (kind)"))
        assert connection.execute(text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar() == 1

    with app.app_context():
        upgrade()
        db.engine.dispose()

    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar() == 0
        definition = connection.execute(text("SELECT pg_get_indexdef('ix_outbox_open'::regclass)")).scalar()
    engine.dispose()
    assert "(client_id, kind, id)" in definition and "ix_outbox_open_by_id" not in definition


def test_an_index_build_waits_out_a_reader_of_another_table_longer_than_the_lock_timeout(
        unmigrated_postgresql_url):
    # A concurrent build waits for every older snapshot, a report's or a dump's on another table
    # too; those waits hold off no writes, so MIGRATION_LOCK_TIMEOUT_MS does not cut them short.
    app = migrated_app(unmigrated_postgresql_url, "0012", MIGRATION_LOCK_TIMEOUT_MS=200)
    readers = create_engine(unmigrated_postgresql_url, isolation_level="REPEATABLE READ")
    reader = readers.connect()
    reader.execute(text("SELECT count(*) FROM bounces"))
    ends = threading.Timer(3.0, reader.rollback)
    ends.start()
    try:
        with app.app_context():
            migrated = app.test_cli_runner().invoke(args=["db-upgrade-locked"])
            version = db.session.scalar(text("SELECT version_num FROM alembic_version"))
            lock_timeout = db.session.scalar(text("SHOW lock_timeout"))
            db.engine.dispose()
    finally:
        ends.join()
        reader.close()
        readers.dispose()

    assert migrated.exit_code == 0, migrated.output
    assert (version, lock_timeout) == ("0013", "0")


def test_a_schema_a_later_release_migrated_lets_this_release_start(unmigrated_postgresql_url, tmp_path):
    # An old instance restarted mid-deploy, or a rollback: alembic alone stops on the unknown revision.
    for url in (unmigrated_postgresql_url, f"sqlite:///{tmp_path / 'sms.sqlite3'}"):
        app = migrated_app(url, "head")
        with app.app_context():
            db.session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
            db.session.commit()
            result = app.test_cli_runner().invoke(args=["db-upgrade-locked"])
            assert result.exit_code == 0, result.output
            assert "database schema at 9999, newer than this code's migrations: nothing to do" in result.output
            assert db.session.scalar(text("SELECT version_num FROM alembic_version")) == "9999"
            db.session.remove()
            db.engine.dispose()
