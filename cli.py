"""Command-line commands: `flask --app app <command>`."""
from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def register(app: Flask) -> None:
    """Attach the service's commands to the Flask CLI (Flask-Migrate adds `flask db`)."""
    app.cli.add_command(worker_command)


@click.command("worker")
@click.option("--once", is_flag=True, help="Run one round of every job, then exit.")
def worker_command(once: bool) -> None:
    """Send queued campaign messages and forward reports to Emarsys until stopped."""
    from services.worker import Worker

    Worker.from_app(current_app._get_current_object()).run(once=once)
