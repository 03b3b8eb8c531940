"""The operator dashboard: one HTML page behind Basic auth, and its dead-letter replay."""
from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from errors import Forbidden, InvalidParameter, NotFound
from routes import forbid_caching
from routes.auth import OPERATOR_REALM, credentials_match, credentials_required
from services import dashboard
from services.charts import stacked_bar_svg
from services.outbox import replay_dead_letters

bp = Blueprint("dashboard", __name__)

REPLAY_TOKEN_LIFETIME = timedelta(hours=8)
MAX_MESSAGE_ID_LENGTH = 120
MAX_VENDOR_LENGTH = 40


def admin_required(view):
    """Guard a view with the admin's Basic credentials; without them configured the page does not exist."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        user, password = current_app.config.get("ADMIN_USERNAME"), current_app.config.get("ADMIN_PASSWORD")
        if not (user and password):
            raise NotFound("the dashboard is disabled: set ADMIN_USERNAME and ADMIN_PASSWORD")
        if not credentials_match(user, password):
            raise credentials_required(OPERATOR_REALM)
        return view(*args, **kwargs)

    return guarded


MAX_ISSUED_DIGITS = 12


def replay_token(issued_at: int | None = None) -> str:
    """Return a token that proves a replay form came from this dashboard (Basic auth alone cannot)."""
    issued_at = int(time.time()) if issued_at is None else issued_at
    return f"{issued_at}.{_token_signature(issued_at)}"


def replay_token_is_valid(token: str) -> bool:
    """Tell whether a replay token is ours and still fresh."""
    issued_text, _, signature = token.partition(".")
    # A Unix time has 10 digits for centuries; a longer one would not even fit a float.
    if not (issued_text.isascii() and issued_text.isdigit() and len(issued_text) <= MAX_ISSUED_DIGITS):
        return False
    age = time.time() - int(issued_text)
    fresh = 0 <= age <= REPLAY_TOKEN_LIFETIME.total_seconds()
    # As bytes: compare_digest refuses str with non-ASCII characters.
    return fresh and hmac.compare_digest(signature.encode(), _token_signature(int(issued_text)).encode())


def _token_signature(issued_at: int) -> str:
    config = current_app.config
    key = f"{config['ADMIN_PASSWORD']}|{config.get('SECRET_KEY') or ''}".encode()
    message = f"dashboard-replay|{config['ADMIN_USERNAME']}|{issued_at}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_same_origin() -> None:
    """Refuse a request that a browser reports as sent from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site and site not in {"same-origin", "none"}:
        raise Forbidden("cross-site requests are refused", field="Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    # Only the host is compared: behind the platform router the scheme seen here is http.
    if origin and _host_of(origin) != request.host:
        raise Forbidden("cross-origin requests are refused", field="Origin")


def _host_of(origin: str) -> str | None:
    try:
        return urlsplit(origin).netloc
    except ValueError:  # e.g. "http://[::1", an unclosed IPv6 literal: no host at all
        return None


@bp.get("/dashboard")
@admin_required
def show_dashboard():
    """Render the dashboard: chart, waiting bounces, forwarding health and a message search."""
    vendor = _bounded_arg("vendor", MAX_VENDOR_LENGTH)
    message_id = _bounded_arg("message_id", MAX_MESSAGE_ID_LENGTH)
    counts = dashboard.reports_per_hour(vendor)
    nonce = secrets.token_urlsafe(16)
    page = render_template(
        "dashboard.html", nonce=nonce, vendor=vendor, message_id=message_id,
        vendors=dashboard.chart_vendors(current_app.extensions.get("vendor_registry", {})),
        chart=stacked_bar_svg(dashboard.report_chart(counts, vendor)),
        chart_total=sum(sum(outcomes.values()) for outcomes in counts.values()),
        bounces=dashboard.waiting_bounces(), health=dashboard.forwarding_health(),
        history=(dashboard.message_history(message_id, current_app.extensions["vendor_registry"])
                 if message_id else None),
        replayed=request.args.get("replayed", type=int), replay_token=replay_token(),
        format_time=format_time, format_age=format_age,
    )
    return _with_page_headers(Response(page, mimetype="text/html"), nonce)


@bp.post("/dashboard/replay")
@admin_required
def replay():
    """Re-queue every dead letter, once the operator confirmed it from the dashboard page."""
    check_same_origin()
    if not replay_token_is_valid(request.form.get("csrf_token", "")):
        raise Forbidden("missing or expired form token: reload the dashboard and try again", field="csrf_token")
    if request.form.get("confirm") != "yes":
        raise InvalidParameter("the replay must be confirmed", field="confirm")
    vendor = (request.form.get("vendor") or "")[:MAX_VENDOR_LENGTH] or None
    replayed = replay_dead_letters()
    current_app.logger.info("dashboard replay re-queued %d dead letter(s)", replayed)
    return redirect(url_for("dashboard.show_dashboard", vendor=vendor, replayed=replayed), code=303)


def format_time(moment: datetime | None) -> str:
    """Render a naive UTC time for the page, or a dash."""
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "–"


def format_age(age: timedelta | None) -> str:
    """Render an age as the two largest units, or a dash."""
    if age is None:
        return "–"
    seconds = int(age.total_seconds())
    days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds % 60} s"


def _bounded_arg(name: str, max_length: int) -> str | None:
    value = (request.args.get(name) or "").strip()
    if len(value) > max_length:
        raise InvalidParameter(f"must be at most {max_length} characters", field=name)
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL: the search would fail instead of finding nothing.
        raise InvalidParameter("must not contain NUL characters", field=name)
    return value or None


def _with_page_headers(response: Response, nonce: str) -> Response:
    # The page may run only its own nonce-tagged lines and may not be framed: the replay button
    # must not be clickable through someone else's page.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return forbid_caching(response)
