"""Command-line commands: `flask --app app <command>`."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def register(app: Flask) -> None:
    """Attach the service's commands to the Flask CLI (Flask-Migrate adds `flask db`)."""
    app.cli.add_command(worker_command)
    app.cli.add_command(outbox_group)


@click.command("worker")
@click.option("--once", is_flag=True, help="Run one round of every job, then exit.")
def worker_command(once: bool) -> None:
    """Send queued campaign messages and forward reports to Emarsys until stopped."""
    from services.worker import Worker

    Worker.from_app(current_app._get_current_object()).run(once=once)


outbox_group = AppGroup("outbox", help="Inspect the Emarsys outbox and replay its dead letters.")


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


@outbox_group.command("status")
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
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def outbox_dead_command(client_id: uuid.UUID | None, limit: int) -> None:
    """List dead letters (never message bodies), oldest first."""
    from services.outbox import count_dead_letters, dead_letters

    letters = dead_letters(limit, client_id)
    click.echo("id\tclient\tkind\tmessage_key\tattempts\tlast_error")
    for letter in letters:
        error = (letter.last_error or "").replace("\n", " ")[:200]
        click.echo(f"{letter.id}\t{letter.client_id}\t{letter.kind}\t{letter.message_key}\t"
                   f"{letter.attempts}\t{error}")
    click.echo(f"{len(letters)} of {count_dead_letters(client_id)} dead letter(s) shown")


@outbox_group.command("replay")
@click.option("--client", "client_id", type=click.UUID, help="Only this Emarsys client.")
@click.option("--since", callback=_since,
              help="Only items created since an ISO time (UTC), e.g. 2026-01-01T00:00, "
                   "or an age, e.g. 2h or 3d.")
def outbox_replay_command(client_id: uuid.UUID | None, since: datetime | None) -> None:
    """Re-queue dead letters for immediate forwarding and print how many."""
    from services.outbox import replay_dead_letters

    click.echo(f"replayed {replay_dead_letters(client_id, since)} dead letter(s)")
