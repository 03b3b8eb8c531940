"""Fixtures: a real PostgreSQL cluster per test session, a clean schema per test."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from models import MessageState, db
from services.clock import utcnow
from services.vendors.transport import allow_private_addresses
from tests.pg import ThrowawayPostgres

TEST_SETTINGS = {
    "TESTING": True,
    "SAP_STATUS_USERNAME": None,
    "SAP_STATUS_PASSWORD": None,
    "ENABLE_CLEAR_ENDPOINT": False,
    "STATUS_PAGE_SIZE": 100,
    "PRODUCTION": False,
    "CONFIG_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    "PUBLIC_BASE_URL": "https://sms.example.com",
    # The fake vendors are pytest-httpserver on 127.0.0.1.
    "VENDOR_ALLOW_PRIVATE_ADDRESSES": True,
}


@pytest.fixture(autouse=True)
def loopback_vendors():
    """Let vendor calls reach the fake vendors on loopback, in every test, as TEST_SETTINGS does."""
    allow_private_addresses(True)
    yield
    allow_private_addresses(True)


@pytest.fixture(scope="session")
def postgres():
    """Start a throwaway PostgreSQL server for the whole session."""
    server = ThrowawayPostgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres):
    """Create the test database and migrate it once to the newest schema."""
    engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE DATABASE sms_status_test"))
    engine.dispose()
    url = postgres.database_url("sms_status_test")
    app = create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return url


@pytest.fixture(scope="session")
def cleaner_app(database_url):
    """Return an app whose only job is emptying the test database between tests."""
    return create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": database_url})


@pytest.fixture
def make_app(database_url, cleaner_app):
    """Return a factory of apps on the test database; tables are emptied after the test."""
    created = []

    def factory(**overrides):
        app = create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": database_url, **overrides})
        created.append(app)
        return app

    yield factory
    for app in created:
        with app.app_context():
            db.engine.dispose()
    with cleaner_app.app_context():
        truncate_all_tables()


@pytest.fixture
def app(make_app):
    """Return the service with default test settings."""
    return make_app()


@pytest.fixture
def client(app):
    """Return a test client of the service."""
    return app.test_client()


@pytest.fixture
def sqlite_app(tmp_path):
    """Return an app on a migrated SQLite file, the `make run` default."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'sms.sqlite3'}",
                      "SAP_STATUS_USERNAME": None, "SAP_STATUS_PASSWORD": None, "STATUS_PAGE_SIZE": 100})
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def record_sent():
    """Return a function that records, as the dispatcher does on a send, a client message's state.

    Emarsys maps reports by its own message id, so a client's vendor report is forwarded only
    for a message whose send tied the vendor id to that id.
    """
    def record(app, client_id, vendor: str, vendor_message_id: str, emarsys_message_id: str = "em-1") -> None:
        with app.app_context():
            now = utcnow()
            db.session.add(MessageState(
                vendor=vendor, vendor_message_id=vendor_message_id, client_id=client_id,
                emarsys_message_id=emarsys_message_id, outcome="ACCEPTED", rank=1, status_code="0",
                status_text="sent", event_at=now.replace(year=now.year - 1), updated_at=now))
            db.session.commit()
    return record


def truncate_all_tables() -> None:
    """Empty every table, so each test starts from a clean schema."""
    names = ", ".join(f'"{table.name}"' for table in db.metadata.sorted_tables)
    db.session.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))
    db.session.commit()
