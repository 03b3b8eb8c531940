"""Command-line commands: `flask --app app <command>`."""
from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from logging_setup import mask_phone_numbers

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# One number every instance agrees on ("sms_mig"): the PostgreSQL advisory lock of migrations.
MIGRATION_LOCK_KEY = 0x736D735F6D6967
MIGRATION_LOCK_POLL_SECONDS = 0.5


def register(app: Flask) -> None:
    """Attach the service's commands to the Flask CLI (Flask-Migrate adds `flask db`)."""
    app.cli.add_command(worker_command)
    app.cli.add_command(outbox_group)
    app.cli.add_command(db_upgrade_locked_command)
    app.cli.add_command(purge_command)
    app.cli.add_command(reseal_secrets_command)


@click.command("worker")
@click.option("--once", is_flag=True, help="Run one round of every job, then exit.")
def worker_command(once: bool) -> None:
    """Send queued campaign messages and forward reports to Emarsys until stopped."""
    from services.worker import JobDied, JobFailed, Worker

    try:
        worker = Worker.from_app(current_app._get_current_object())
    except ValueError as exc:
        # A settings fault: one line that names it, and a failed exit, not a traceback.
        raise click.ClickException(f"worker settings: {exc}") from None
    try:
        worker.run(once=once)
    except (JobDied, JobFailed) as exc:
        raise click.ClickException(str(exc)) from None  # a failed exit: the platform restarts it


def database_faults_in_one_line(command: Callable[..., None]) -> Callable[..., None]:
    """Wrap a command so that a database error stops it with one line naming the fault, not a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        from models import db

        # Connecting first tells "unreachable" apart from what fails later (a statement timeout,
        # a lock wait, a missing table), which psycopg2 also calls OperationalError.
        check_reachable(db.engine)
        try:
            command(*args, **kwargs)
        except DBAPIError as error:
            raise click.ClickException(f"database error: {driver_reason(error)}") from None

    return run


def driver_reason(error: DBAPIError) -> str:
    """Return the first line of the driver's message: where and why, never the password."""
    # libpq's first line says where and why ("... port 5432 failed: Connection refused").
    return str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__


outbox_group = AppGroup("outbox", help="Inspect the Emarsys outbox and replay its dead letters.")

# A row count that reaches SQL (a LIMIT): a larger one can overflow the driver's integer (SQLite's ends at
# 2**63 - 1) with a traceback, and no table here holds 2**31 rows.
ROW_COUNT = click.IntRange(1, 2**31 - 1)
TOO_FAR_BACK = "too far back: the time it names would be before the year 1"


def _format_age(age: timedelta) -> str:
    """Render an age as e.g. "2d 3h 4m 5s"."""
    seconds = int(age.total_seconds())
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m"),
             (seconds % 60, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return " ".join(shown) or "0s"


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Turn --since into naive UTC, or fail with a usage error."""
    from services.outbox import parse_since

    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    except OverflowError:
        raise click.BadParameter(TOO_FAR_BACK, ctx=ctx, param=param) from None


@outbox_group.command("status")
@database_faults_in_one_line
def outbox_status_command() -> None:
    """Print how many outbox items are in each state and the oldest pending age."""
    from services.outbox import outbox_status

    status = outbox_status()
    for state, count in status.counts.items():
        click.echo(f"{state:<8}{count:>10}")
    age = status.oldest_pending_age
    click.echo(f"oldest pending: {'none' if age is None else _format_age(age)}")


@outbox_group.command("dead")
@click.option("--client", "client_id", type=click.UUID, help="Only this Emarsys client.")
@click.option("--limit", default=100, show_default=True, type=ROW_COUNT, help="Most dead letters to list.")
@database_faults_in_one_line
def outbox_dead_command(client_id: uuid.UUID | None, limit: int) -> None:
    """List dead letters (never message bodies), oldest first."""
    from services.outbox import count_dead_letters, dead_letters

    letters = dead_letters(limit, client_id)
    click.echo("id\tclient\tkind\tmessage_key\tattempts\tlast_error")
    for letter in letters:
        # An Emarsys 400's error texts may quote subscriber data; stdout is a log stream on Cloud Foundry.
        error = mask_phone_numbers((letter.last_error or "").replace("\n", " ")[:200])
        click.echo(f"{letter.id}\t{letter.client_id}\t{letter.kind}\t{letter.message_key}\t"
                   f"{letter.attempts}\t{error}")
    click.echo(f"{len(letters)} of {count_dead_letters(client_id)} dead letter(s) shown")


@outbox_group.command("replay")
@click.option("--client", "client_id", type=click.UUID, help="Only this Emarsys client.")
@click.option("--since", callback=_since,
              help="Only items created since an ISO time (UTC), e.g. 2026-01-01T00:00, "
                   "or an age, e.g. 2h or 3d.")
@database_faults_in_one_line
def outbox_replay_command(client_id: uuid.UUID | None, since: datetime | None) -> None:
    """Re-queue dead letters for immediate forwarding and print how many."""
    from services.outbox import count_dead_letters, replay_dead_letters

    click.echo(f"replayed {replay_dead_letters(client_id, since)} dead letter(s)")
    left = count_dead_letters(client_id)
    if left:
        click.echo(f"{left} dead letter(s) left: created before --since, superseded by a later report "
                   "of the same message, sent or on its way (sent now, it would move its state backwards), "
                   "or of a deleted client; `outbox discard-superseded` removes the last two kinds")


@outbox_group.command("discard-superseded")
@click.option("--client", "client_id", type=click.UUID, help="Only this Emarsys client.")
@database_faults_in_one_line
def outbox_discard_superseded_command(client_id: uuid.UUID | None) -> None:
    """Delete the dead letters replay leaves dead (superseded, or a deleted client's) and print how many."""
    from services.outbox import count_dead_letters, discard_superseded_dead_letters

    click.echo(f"discarded {discard_superseded_dead_letters(client_id)} superseded dead letter(s) "
               "(or of a deleted client)")
    click.echo(f"{count_dead_letters(client_id)} dead letter(s) left, each the latest report of its message")


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the migrations' session advisory lock while the block runs; others wait their turn."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # Asked for again and again rather than waited for in one statement: a statement waiting
        # holds a snapshot, and the holder's CREATE INDEX CONCURRENTLY waits for every snapshot to
        # end, so the two would deadlock.
        ask = text("SELECT pg_try_advisory_lock(:key)")
        while not connection.execute(ask, {"key": MIGRATION_LOCK_KEY}).scalar():
            time.sleep(MIGRATION_LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})


def check_reachable(engine: Engine) -> None:
    """Connect once, or stop with one line that names the database and the driver's reason."""
    from errors import StartupError

    try:
        engine.connect().close()
    except DBAPIError as error:
        # SQLite's reason ("unable to open database file") names no file; its URL holds no password.
        where = f": {engine.url.database}" if engine.dialect.name == "sqlite" else ""
        raise StartupError(f"database unreachable: {driver_reason(error)}{where}") from None


def lift_statement_timeout(engine: Engine) -> None:
    """Let this process's new connections wait and migrate without the app's statement timeout."""
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _no_statement_timeout(dbapi_connection, _record) -> None:
        # In autocommit: a SET inside a transaction that is later rolled back would be undone.
        autocommit, dbapi_connection.autocommit = dbapi_connection.autocommit, True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
        dbapi_connection.autocommit = autocommit


@click.command("db-upgrade-locked")
def db_upgrade_locked_command() -> None:
    """Migrate to the newest schema once, however many instances start at the same time."""
    from flask_migrate import upgrade

    from models import db

    if db.engine.dialect.name != "postgresql":
        check_reachable(db.engine)  # a file that cannot be opened (its directory missing): one line
        if not schema_is_newer(db.engine):
            upgrade()  # SQLite serves one local process; there is nobody to race.
        return
    # Waiting for the lock, or a long migration, must not be cut off by the 10 s statement timeout.
    lift_statement_timeout(db.engine)
    check_reachable(db.engine)
    with migration_lock(db.engine):
        if schema_is_newer(db.engine):
            return
        upgrade_retrying_lock_timeouts(upgrade, current_app.config["MIGRATION_LOCK_TIMEOUT_MS"] / 1000)
    click.echo("database schema is up to date", err=True)  # stdout carries only log lines


def schema_is_newer(engine: Engine) -> bool:
    """Tell whether a later release has migrated the database past this code's migrations, and say so."""
    from services.health import is_newer_schema, schema_revision

    with engine.connect() as connection:
        revision = schema_revision(connection)
    if not is_newer_schema(revision, str(MIGRATIONS_DIR)):
        return False
    # As /ready judges it: the previous release (an old instance restarted mid-deploy, a rollback) runs on
    # the next one's schema, which migrations keep compatible; alembic would stop on the unknown revision.
    click.echo(f"database schema at {revision}, newer than this code's migrations: nothing to do", err=True)
    return True


# How often a migration that gave up waiting for a table lock is tried, in all.
MIGRATION_ATTEMPTS = 5
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_timeout


def upgrade_retrying_lock_timeouts(upgrade: Callable[[], None], lock_timeout_seconds: float) -> None:
    """Run `upgrade`; a revision that gave up waiting for a table lock is tried again, a few times."""
    from errors import StartupError

    for attempt in range(1, MIGRATION_ATTEMPTS + 1):
        try:
            upgrade()
            return
        except OperationalError as error:
            if getattr(error.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
                raise
            click.echo(f"migration gave up waiting for a lock (attempt {attempt} of {MIGRATION_ATTEMPTS}); "
                       "a long transaction holds a table it changes, or (an index built concurrently) "
                       "an older snapshot", err=True)
            time.sleep(lock_timeout_seconds)
    raise StartupError(f"migration gave up: a table it changes stayed locked through {MIGRATION_ATTEMPTS} "
                       "attempts (see pg_stat_activity for long transactions), try again once they end")


def _age(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """Turn --older-than (e.g. 30d, 12h) into a positive timedelta, or fail with a usage error."""
    from services.clock import utcnow
    from services.retry import parse_age

    if value is None:
        return None
    try:
        seconds = parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if seconds <= 0:
        raise click.BadParameter("must be more than zero, e.g. 30d", ctx=ctx, param=param)
    try:
        age = timedelta(seconds=seconds)
        utcnow() - age  # the cutoff the command computes from it
    except OverflowError:
        raise click.BadParameter(TOO_FAR_BACK, ctx=ctx, param=param) from None
    return age


@click.command("purge")
@click.option("--older-than", "older_than", callback=_age,
              help="Delete rows older than this age, e.g. 30d or 12h (default: RETENTION_DAYS).")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--batch-size", type=ROW_COUNT, help="Rows per transaction (default: PURGE_BATCH_SIZE).")
@database_faults_in_one_line
def purge_command(older_than: timedelta | None, dry_run: bool, batch_size: int | None) -> None:
    """Delete what has outlived the retention, in short batches, and print the count per table."""
    from services.clock import utcnow
    from services.retention import purge

    cutoff = utcnow() - (older_than or timedelta(days=current_app.config["RETENTION_DAYS"]))
    results = purge(cutoff, batch_size or current_app.config["PURGE_BATCH_SIZE"], dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"rows older than {cutoff:%Y-%m-%d %H:%M:%S} UTC (status cursors: older than a day)")
    click.echo(f"{'table':<20}{verb:>14}")
    for result in results:
        click.echo(f"{result.table:<20}{result.rows:>14}")
    click.echo(f"{'total':<20}{sum(result.rows for result in results):>14}")


@click.command("reseal-secrets")
@database_faults_in_one_line
def reseal_secrets_command() -> None:
    """Encrypt every client's secrets with the first CONFIG_ENCRYPTION_KEY, so the others can be dropped."""
    from services.clients import reseal_secrets

    resealed, unreadable = reseal_secrets()
    click.echo(f"resealed {resealed} client(s) with the first CONFIG_ENCRYPTION_KEY")
    if unreadable:
        names = ", ".join(str(client_id) for client_id in unreadable)
        raise click.ClickException(f"{len(unreadable)} client(s) cannot be read with any configured key "
                                   f"and were left as they were (a PUT of their configuration repairs them): {names}")
