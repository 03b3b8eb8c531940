"""The migrations build exactly the schema the models declare, on PostgreSQL and on SQLite."""
from __future__ import annotations

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
    migrated_app = request.getfixturevalue(app_fixture)
    with migrated_app.app_context(), db.engine.connect() as connection:
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
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
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


@pytest.fixture
def unmigrated_postgresql_url(postgres):
    """Return the URL of an empty PostgreSQL database."""
    return fresh_postgresql_database(postgres, "sms_lock_test")


def test_a_migration_blocked_by_a_long_transaction_gives_up_instead_of_stalling_the_service(
        unmigrated_postgresql_url):
    app = create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": unmigrated_postgresql_url,
                      "MIGRATION_LOCK_TIMEOUT_MS": 200})
    with app.app_context():
        upgrade(revision="0011")
        db.engine.dispose()
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
