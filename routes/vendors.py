"""Open endpoints where SMS vendors push delivery receipts and inbound messages."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from mappers import sapdi
from services.ingest import record_delivery_report, utcnow

bp = Blueprint("vendors", __name__)


def request_params() -> dict[str, str]:
    """Return the query string and form fields as one flat dict (first value wins)."""
    params = {key: request.args.get(key, "") for key in request.args}
    params.update({key: request.form.get(key, "") for key in request.form})
    return params


@bp.get("/api/v1/notifications/set")
def sapdi_notification():
    """Store a SAP Digital Interconnect status notification (the blog's `set`)."""
    params = request_params()
    report = sapdi.map_delivery_report(params, utcnow())
    result = record_delivery_report(sapdi.VENDOR, report, params)
    return jsonify({"stored": not result.duplicate, "duplicate": result.duplicate}), 200
