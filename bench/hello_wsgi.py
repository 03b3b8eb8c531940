"""A hello-world Flask app: the ceiling the ingest benchmark compares against (bench only)."""
from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    """Answer a constant text."""
    return "hello"
