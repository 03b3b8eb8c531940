"""Readiness checks: the database answers, and its schema is not older than this code."""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from alembic.script import ScriptDirectory
from flask import copy_current_request_context, current_app, has_request_context
from sqlalchemy import inspect, text

from models import db

# A small fixed pool: a hung check must not spawn a new thread per probe.
_probe_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ready-probe")
# And a bounded queue: /ready is open, and while the database hangs every probe would wait there.
MAX_PROBES_IN_FLIGHT = 4
_probe_slots = threading.BoundedSemaphore(MAX_PROBES_IN_FLIGHT)


def database_ready(timeout_seconds: float) -> str | None:
    """Return None when the database answers in time with a schema this code can use, else the reason."""
    probe = _check_database
    if has_request_context():
        probe = copy_current_request_context(_check_database)
    if not _probe_slots.acquire(blocking=False):
        return "database did not answer the checks still running"
    future = _probe_pool.submit(probe)
    future.add_done_callback(lambda _: _probe_slots.release())
    try:
        return future.result(timeout=timeout_seconds)
    except FutureTimeout:
        return f"database did not answer within {timeout_seconds:g} s"
    except Exception as exc:  # Any driver error means "not ready"; its class tells the operator why.
        return f"database error: {type(exc).__name__}"


def _check_database() -> str | None:
    database = str(db.engine.url)
    with db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        if database in _schemas_seen_current:  # a schema does not move back: checked until current
            return None
        revision = schema_revision(connection)
    problem = schema_behind(revision, current_app.extensions["migrate"].directory)
    if problem is None:
        _schemas_seen_current.add(database)
    return problem


_schemas_seen_current: set[str] = set()


def schema_revision(connection) -> str | None:
    """Return the database's alembic revision, or None before its first migration."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def schema_behind(revision: str | None, migrations_dir: str) -> str | None:
    """Return why a database at `revision` is older than the migrations in the directory, else None."""
    script = _migration_script(migrations_dir)
    head = script.get_current_head()
    if revision == head:
        return None
    if revision is None:
        return f"database schema not migrated; this code needs {head}: run flask --app app db-upgrade-locked"
    if is_newer_schema(revision, migrations_dir):
        return None  # a rolling deploy's new release migrated it first
    return f"database schema at {revision}, this code needs {head}: run flask --app app db-upgrade-locked"


def is_newer_schema(revision: str | None, migrations_dir: str) -> bool:
    """Tell whether `revision` is one this code's migrations do not know: a later release's."""
    script = _migration_script(migrations_dir)
    return revision is not None and revision not in {known.revision for known in script.walk_revisions()}


@functools.cache
def _migration_script(migrations_dir: str) -> ScriptDirectory:
    return ScriptDirectory(migrations_dir)
