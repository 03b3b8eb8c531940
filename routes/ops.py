"""Endpoints for the people and platforms that run the service."""
from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    """Answer 200 while the process is up."""
    return jsonify({"status": "up"})
