"""Endpoints for the people and platforms that run the service."""
from __future__ import annotations

from flask import Blueprint, jsonify

from services.health import database_ready

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    """Answer 200 while the process is up."""
    return jsonify({"status": "up"})


@bp.get("/ready")
def ready():
    """Answer 200 when the database answers within a second, else 503 with the reason."""
    problem = database_ready(timeout_seconds=1.0)
    if problem:
        return jsonify({"status": "unavailable", "reason": problem}), 503
    return jsonify({"status": "ready"})
