"""Endpoints for the people and platforms that run the service."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from routes.auth import OPERATOR_REALM, basic_auth_required
from schemas.openapi import openapi_document
from services.health import database_ready

bp = Blueprint("ops", __name__)

# Metrics carry no secrets or message data, yet the web route is public on Cloud Foundry.
operator_auth = basic_auth_required("ADMIN_USERNAME", "ADMIN_PASSWORD", OPERATOR_REALM)


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


@bp.get("/metrics")
@operator_auth
def metrics():
    """Answer the Prometheus metrics of every web process and of the worker, in text format."""
    body, content_type = current_app.extensions["metrics"].render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    """Answer the OpenAPI description of every endpoint of this service."""
    return jsonify(openapi_document(current_app))
