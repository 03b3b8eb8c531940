"""SAP Marketing Cloud's bounce pull (generic text message adapter) and the blog's helpers."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from routes import forbid_caching
from routes.auth import basic_auth_required
from schemas.status import StatusQuerySchema
from services.bounces import clear_all, fetch_bounce_page

bp = Blueprint("sap", __name__)

sap_auth = basic_auth_required("SAP_STATUS_USERNAME", "SAP_STATUS_PASSWORD", "sap-status")
# One instance for every request: building a schema copies all its fields, which cost more than the load.
status_query = StatusQuerySchema()


@bp.before_request
def refuse_head():
    """Refuse HEAD, which Flask adds to every GET: a pull marks what it serves pulled, page 0 restarts a sequence."""
    if request.method == "HEAD":
        raise MethodNotAllowed(valid_methods=sorted(request.url_rule.methods - {"HEAD", "OPTIONS"}))


# Kept out of every cache: bounces carry phone numbers.
bp.after_request(forbid_caching)


@bp.get("/status")
@bp.get("/hybris_sms/status")
@bp.get("/api/v1/notifications/get")
@sap_auth
def status():
    """Answer one page of bounces in the requested window."""
    query = status_query.load(request.args.to_dict())
    page_size = current_app.config["STATUS_PAGE_SIZE"]
    if request.path == "/api/v1/notifications/get" and not request.args:
        # The blog: without parameters, every record at once. Bounded here: it is page 0 of the whole
        # store at STATUS_GET_ALL_LIMIT a page, so lastPage says if it was all, and `?page=1` goes on.
        page_size = current_app.config["STATUS_GET_ALL_LIMIT"]
    page = fetch_bounce_page(query["startTimeUTC"], query["endTimeUTC"], query["page"], page_size,
                             query["sourceSystem"])
    return jsonify({"page": str(page.page), "lastPage": page.last_page,
                    "status": page.status})


@bp.route("/api/v1/notifications/clear", methods=["GET", "POST", "DELETE"])
@sap_auth
def clear():
    """Delete every record; only for test set-ups with ENABLE_CLEAR_ENDPOINT on."""
    if not current_app.config["ENABLE_CLEAR_ENDPOINT"]:
        abort(404)
    clear_all()
    return jsonify({"cleared": True})
