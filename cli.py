"""Command-line commands: `flask --app app <command>`."""
from __future__ import annotations

from pathlib import Path

from flask import Flask

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def register(app: Flask) -> None:
    """Attach the service's commands to the Flask CLI."""
    # Flask-Migrate contributes `flask db ...`; later commands (worker, outbox, purge) join here.
    return None
