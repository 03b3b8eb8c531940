"""The operator dashboard: access, figures, chart, message history and dead-letter replay."""
from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from mappers.report import DeliveryReport, Outcome
from models import Bounce, MessageState, OutboundMessage, OutboxItem, RawEvent, db
from routes.dashboard import format_age, replay_token
from services import dashboard
from services.charts import StackedBars, nice_ceiling, stacked_bar_svg
from services.clock import utcnow
from services.ingest import record_delivery_report
from tests.records import ensure_client, insert_client

ADMIN = ("operator", "dash-Pa55-word")
CLIENT_ID = uuid.UUID("0d3c8f4e-6a0b-4c55-9d1e-3f2a1b4c5d6e")
RECIPIENT = "+491701234567"
MASKED_RECIPIENT = "+********4567"


@pytest.fixture
def admin_app(make_app):
    """Return the service with the dashboard enabled."""
    return make_app(ADMIN_USERNAME=ADMIN[0], ADMIN_PASSWORD=ADMIN[1])


@pytest.fixture
def admin(admin_app):
    """Return a test client of the dashboard-enabled service."""
    return admin_app.test_client()


def page(admin, **params) -> str:
    """Fetch the dashboard with the admin's credentials and return its HTML."""
    response = admin.get("/dashboard", query_string=params, auth=ADMIN)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def figure(html: str, element_id: str) -> str:
    """Return the text of the element with this id."""
    match = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert match, f"no element {element_id} on the page"
    return match.group(1).strip()


def bar_counts(html: str) -> dict[str, int]:
    """Sum the chart's bar segments by series."""
    totals: dict[str, int] = {}
    for series, count in re.findall(r'<rect class="bar" data-series="(\w+)" data-count="(\d+)"', html):
        totals[series] = totals.get(series, 0) + int(count)
    return totals


def add_state(vendor: str, vendor_message_id: str, outcome: str, updated_at: datetime, **extra) -> MessageState:
    """Store one message state directly, at a chosen time."""
    state = MessageState(vendor=vendor, vendor_message_id=vendor_message_id, outcome=outcome, rank=1,
                         status_code="0", status_text="", event_at=updated_at, updated_at=updated_at, **extra)
    db.session.add(state)
    db.session.flush()
    return state


def add_report(vendor: str, vendor_message_id: str, outcome: str, received_at: datetime,
               kind: str = "delivery_report") -> None:
    """Store one raw delivery report (or another kind of raw event) directly, at a chosen time."""
    db.session.add(RawEvent(vendor=vendor, kind=kind, vendor_message_id=vendor_message_id,
                            fingerprint=f"{vendor}-{vendor_message_id}-{outcome}-{received_at}", params={},
                            outcome=outcome, received_at=received_at))


def add_bounce(bounce_type: str, pulled: bool, index: int) -> None:
    """Store one bounce, pulled by SAP or not."""
    state = add_state("genesys", f"bounce-{index}", "HARDBOUNCE", utcnow())
    db.session.add(Bounce(message_state_id=state.id, message_id=state.vendor_message_id, recipient=RECIPIENT,
                          status_code="5", status_text="failed", type=bounce_type, event_at=utcnow(),
                          pulled_at=utcnow() if pulled else None, seq=index))


def add_outbox_item(state: str, message_key: str = "m", created_at: datetime | None = None,
                    sent_at: datetime | None = None, attempts: int = 0) -> OutboxItem:
    """Store one outbox item of the client in a given state."""
    ensure_client(CLIENT_ID)
    now = utcnow()
    item = OutboxItem(client_id=CLIENT_ID, kind="delivery_report", message_key=message_key,
                      payload={"emarsysMessageId": message_key}, event_at=now, state=state, attempts=attempts,
                      next_attempt_at=now, created_at=created_at or now, sent_at=sent_at,
                      last_error="400 from Emarsys" if state == "dead" else None)
    db.session.add(item)
    return item


def outbox_states(app) -> list[tuple[str, int]]:
    """Return (state, attempts) of every outbox item, by id."""
    with app.app_context():
        return [tuple(row) for row in db.session.execute(
            select(OutboxItem.state, OutboxItem.attempts).order_by(OutboxItem.id))]


@pytest.mark.parametrize("settings", [
    {},
    {"ADMIN_USERNAME": "operator"},
    {"ADMIN_PASSWORD": "secret"},
])
def test_dashboard_is_404_json_when_admin_credentials_are_unset(make_app, settings):
    client = make_app(**settings).test_client()
    for response in (client.get("/dashboard", auth=ADMIN), client.post("/dashboard/replay", auth=ADMIN)):
        assert response.status_code == 404
        assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize("auth", [None, ("operator", "wrong"), ("someone", ADMIN[1])])
def test_dashboard_asks_for_basic_credentials(admin, auth):
    for response in (admin.get("/dashboard", auth=auth), admin.post("/dashboard/replay", auth=auth)):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert response.get_json()["field"] == "Authorization"


def test_dashboard_and_metrics_ask_for_one_realm_so_a_browser_asks_once(admin):
    dashboard, metrics = admin.get("/dashboard"), admin.get("/metrics")
    assert (dashboard.status_code, metrics.status_code) == (401, 401)
    assert dashboard.headers["WWW-Authenticate"] == metrics.headers["WWW-Authenticate"]


def test_dashboard_is_html_that_no_other_site_may_frame_or_script(admin):
    response = admin.get("/dashboard", auth=ADMIN)
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'nonce-" in policy
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    assert f'<script nonce="{nonce}">' in response.get_data(as_text=True)


def test_dashboard_counts_bounces_waiting_for_sap(admin_app, admin):
    with admin_app.app_context():
        for index, (bounce_type, pulled) in enumerate([("Permanent", False), ("Permanent", False),
                                                       ("Permanent", True), ("Temporary", False),
                                                       ("Temporary", True), ("Temporary", True)]):
            add_bounce(bounce_type, pulled, index)
        db.session.commit()
    html = page(admin)
    assert (figure(html, "bounces-permanent"), figure(html, "bounces-temporary")) == ("2", "1")


def test_dashboard_shows_forwarding_health(admin_app, admin):
    sent_at = datetime(2026, 3, 4, 5, 6, 7)
    with admin_app.app_context():
        add_outbox_item("pending", created_at=utcnow() - timedelta(hours=3))
        add_outbox_item("pending")
        add_outbox_item("leased")
        add_outbox_item("done", sent_at=sent_at - timedelta(days=1))
        add_outbox_item("done", sent_at=sent_at)
        for _ in range(4):
            add_outbox_item("dead", attempts=6)
        db.session.commit()
    html = page(admin)
    assert figure(html, "outbox-depth") == "3"
    assert figure(html, "dead-letters") == "4"
    assert figure(html, "last-success") == "2026-03-04 05:06:07 UTC"
    assert figure(html, "oldest-pending").startswith("3 h ")


def test_forwarding_health_reports_the_oldest_waiting_item(admin_app):
    now = datetime(2026, 5, 1, 12, 0, 0)
    with admin_app.app_context():
        add_outbox_item("leased", created_at=now - timedelta(minutes=90))
        add_outbox_item("dead", created_at=now - timedelta(days=2))
        db.session.commit()
        health = dashboard.forwarding_health(now)
    assert (health.depth, health.oldest_pending_age, health.last_success, health.dead_letters) == (
        1, timedelta(minutes=90), None, 1)


def test_reports_per_hour_buckets_the_last_24_hours_by_outcome_and_vendor(admin_app):
    now = datetime(2026, 5, 1, 12, 30, 0)
    with admin_app.app_context():
        add_report("genesys", "g1", "DELIVERED", datetime(2026, 5, 1, 12, 5))
        add_report("genesys", "g2", "DELIVERED", datetime(2026, 5, 1, 12, 29))
        add_report("genesys", "g3", "HARDBOUNCE", datetime(2026, 5, 1, 12, 0))
        add_report("genesys", "g4", "SOFTBOUNCE", datetime(2026, 4, 30, 13, 0))  # the first bucket
        add_report("genesys", "g5", "DELIVERED", datetime(2026, 4, 30, 12, 59))  # 25th hour: too old
        add_report("twilio", "t1", "DELIVERED", datetime(2026, 5, 1, 11, 0))
        # The dispatcher's own record of a send is no vendor report.
        add_report("genesys", "g1", "ACCEPTED", datetime(2026, 5, 1, 12, 1), kind="send_result")
        db.session.commit()
        genesys = dashboard.reports_per_hour("genesys", now)
        everyone = dashboard.reports_per_hour(None, now)
    assert len(genesys) == 24 and min(genesys) == datetime(2026, 4, 30, 13, 0)
    assert {hour: counts for hour, counts in genesys.items() if counts} == {
        datetime(2026, 5, 1, 12): {"DELIVERED": 2, "HARDBOUNCE": 1},
        datetime(2026, 4, 30, 13): {"SOFTBOUNCE": 1},
    }
    assert everyone[datetime(2026, 5, 1, 11)] == {"DELIVERED": 1}


def test_chart_shows_the_selected_vendors_reports_stacked_by_outcome(admin_app, admin):
    with admin_app.app_context():
        now = utcnow()
        for index, outcome in enumerate(["DELIVERED"] * 3 + ["HARDBOUNCE"] * 2 + ["ACCEPTED"]):
            add_report("genesys", f"g{index}", outcome, now)
        add_report("genesys", "g0", "ACCEPTED", now)  # an earlier report of g0: reports, not messages, count
        add_report("twilio", "t1", "ERROR", now)
        db.session.commit()
    genesys = page(admin, vendor="genesys")
    assert bar_counts(genesys) == {"DELIVERED": 3, "HARDBOUNCE": 2, "ACCEPTED": 2}
    assert figure(genesys, "chart-total").startswith("7 delivery report(s)")
    assert '<option value="genesys" selected>' in genesys
    assert bar_counts(page(admin)) == {"DELIVERED": 3, "HARDBOUNCE": 2, "ACCEPTED": 2, "ERROR": 1}


def deliver(vendor_message_id: str, outcome: Outcome, status_text: str = "ok", minutes: int = 0) -> None:
    """Ingest one delivery report of the Emarsys client's message."""
    report = DeliveryReport(vendor_message_id=vendor_message_id, recipient=RECIPIENT, status_code="2",
                            status_text=status_text, event_at=utcnow() + timedelta(minutes=minutes),
                            outcome=outcome)
    params = {"message_id": vendor_message_id, "msisdn": RECIPIENT, "password": "vendor-Pa55",
              "message": "Your secret code is 4711", "status": status_text}
    record_delivery_report("genesys", report, params, client_id=CLIENT_ID, emarsys_message_id="em-42")


def add_outbound(public_id: str, vendor_message_id: str) -> None:
    """Store the campaign message Emarsys handed over for this history."""
    now = utcnow()
    db.session.add(OutboundMessage(public_id=public_id, client_id=CLIENT_ID, emarsys_message_id="em-42",
                                   source="ACME", destination=RECIPIENT, body="Top secret campaign text",
                                   state="sent", attempts=1, next_attempt_at=now, vendor="genesys",
                                   vendor_message_id=vendor_message_id, created_at=now, updated_at=now))
    db.session.commit()


@pytest.mark.parametrize("searched", ["em-42", "pub-7", "vmid-7"])
def test_search_shows_a_messages_whole_history_by_any_of_its_ids(admin_app, admin, searched):
    with admin_app.app_context():
        insert_client(CLIENT_ID)
        add_outbound("pub-7", "vmid-7")
        deliver("vmid-7", Outcome.ACCEPTED, "accepted")
        deliver("vmid-7", Outcome.HARDBOUNCE, "absent subscriber", minutes=1)
        db.session.execute(db.update(OutboxItem).where(OutboxItem.id == 1)
                           .values(state="done", attempts=1, sent_at=datetime(2026, 1, 2, 3, 4, 5)))
        db.session.commit()
    html = page(admin, message_id=searched)
    history = html[html.index('id="history"'):]
    assert history.count("absent subscriber") >= 2  # raw event, state
    for table_id in ("raw-events", "states", "outbound", "forwarding-attempts"):
        assert f'id="{table_id}"' in history
    assert 'id="bounces-history"' not in history  # an Emarsys client's bounce is never SAP's
    raw_events = history[history.index('id="raw-events"'):history.index('id="states"')]
    assert raw_events.count("<tr>") == 3  # header and two reports
    attempts = history[history.index('id="forwarding-attempts"'):]
    assert "2026-01-02 03:04:05 UTC" in attempts and ">done<" in attempts and ">pending<" in attempts


def test_search_shows_the_sap_bounce_of_a_message_sent_outside_emarsys(admin_app, admin):
    with admin_app.app_context():
        report = DeliveryReport(vendor_message_id="vmid-sap", recipient=RECIPIENT, status_code="5",
                                status_text="absent subscriber", event_at=utcnow(), outcome=Outcome.HARDBOUNCE)
        record_delivery_report("genesys", report, {"message_id": "vmid-sap", "result_code": "5"})
    history = page(admin, message_id="vmid-sap")
    bounces = history[history.index('id="bounces-history"'):]
    assert "absent subscriber" in bounces and "Permanent" in bounces


def test_history_masks_phone_numbers_and_hides_secrets_and_bodies(admin_app, admin):
    with admin_app.app_context():
        add_outbound("pub-8", "vmid-8")
        deliver("vmid-8", Outcome.HARDBOUNCE, f"no route to {RECIPIENT}")
    html = page(admin, message_id="em-42")
    assert MASKED_RECIPIENT in html
    for secret in (RECIPIENT, RECIPIENT[1:], "vendor-Pa55", "code is 4711", "Top secret campaign text"):
        assert secret not in html


MAPPED_VENDOR = """vendors:
  acme:
    parameters: {message_id: msgid, status_code: stat, recipient: dest_addr}
    outcomes: {"1": DELIVERED}
    inbound: {message_id: msgid, source: sender_msisdn, destination: short_code, body: sms_text}
"""


def test_history_hides_and_masks_what_a_mapping_file_vendor_declares(make_app, tmp_path):
    mappings = tmp_path / "vendor-mappings.yaml"
    mappings.write_text(MAPPED_VENDOR)
    app = make_app(ADMIN_USERNAME=ADMIN[0], ADMIN_PASSWORD=ADMIN[1], VENDOR_MAPPINGS_FILE=str(mappings))
    client = app.test_client()
    assert client.get("/vendors/acme/inbound-messages", query_string={
        "msgid": "in-1", "sender_msisdn": "4915123456789", "short_code": "4711",
        "sms_text": "My PIN is 8642"}).status_code == 200
    assert client.get("/vendors/acme/delivery-reports", query_string={
        "msgid": "in-1", "stat": "1", "dest_addr": "4915198765432"}).status_code == 200
    html = page(client, message_id="in-1")
    for private in ("My PIN is 8642", "4915123456789", "4915198765432"):
        assert private not in html
    assert "[14 characters hidden]" in html and "*********6789" in html and "*********5432" in html


def test_search_for_an_unknown_id_says_so_and_escapes_it(admin):
    html = page(admin, message_id="<script>alert(1)</script>")
    assert figure(html, "history-empty").startswith("Nothing is stored about &lt;script&gt;alert(1)")
    assert "<script>alert(1)" not in html


def page_token(admin) -> str:
    """Return the form token from the dashboard page."""
    return re.search(r'name="csrf_token" value="([^"]+)"', page(admin)).group(1)


def test_replay_requeues_every_dead_letter(admin_app, admin):
    with admin_app.app_context():
        add_outbox_item("dead", "m-1", attempts=6)
        add_outbox_item("done", "m-2", sent_at=utcnow())
        add_outbox_item("dead", "m-3", attempts=3)
        db.session.commit()
    assert figure(page(admin), "dead-letters") == "2"
    response = admin.post("/dashboard/replay", auth=ADMIN, headers={"Origin": "http://localhost"},
                          data={"csrf_token": page_token(admin), "confirm": "yes"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/dashboard?replayed=2")
    assert outbox_states(admin_app) == [("pending", 0), ("done", 0), ("pending", 0)]
    html = page(admin, replayed=2)
    assert figure(html, "dead-letters") == "0"
    assert "Re-queued 2 dead letter(s)" in html


def test_replay_button_asks_for_confirmation_and_is_off_without_dead_letters(admin):
    html = page(admin)
    assert 'data-question="Re-queue 0 dead letter(s) for forwarding to Emarsys?"' in html
    assert "window.confirm(this.dataset.question)" in html
    assert re.search(r'id="replay-button" disabled', html)


@pytest.mark.parametrize("form, headers, status", [
    ({"confirm": "yes"}, {}, 403),
    ({"confirm": "yes", "csrf_token": "1.forged"}, {}, 403),
    ({"confirm": "yes", "csrf_token": "².forged"}, {}, 403),
    ({"confirm": "yes", "csrf_token": "fresh-non-ascii"}, {}, 403),  # a fresh time, signature "é": was a 500
    ({"confirm": "yes", "csrf_token": "9" * 400}, {}, 403),  # past a float: was a 500
    ({"confirm": "yes", "csrf_token": "1" * 5000 + ".x"}, {}, 403),  # past int()'s 4,300 digits
    ({"confirm": "yes", "csrf_token": "expired"}, {}, 403),
    ({"csrf_token": "valid"}, {}, 400),
    ({"confirm": "yes", "csrf_token": "valid"}, {"Origin": "https://evil.example"}, 403),
    ({"confirm": "yes", "csrf_token": "valid"}, {"Origin": "null"}, 403),
    ({"confirm": "yes", "csrf_token": "valid"}, {"Origin": "http://[::1"}, 403),  # unparsable: was a 500
    ({"confirm": "yes", "csrf_token": "valid"}, {"Origin": "http://]"}, 403),
    ({"confirm": "yes", "csrf_token": "valid"}, {"Sec-Fetch-Site": "cross-site"}, 403),
])
def test_replay_without_token_confirmation_or_same_origin_changes_nothing(admin_app, admin, form, headers, status):
    with admin_app.app_context():
        add_outbox_item("dead", attempts=6)
        db.session.commit()
        tokens = {"valid": replay_token(), "expired": replay_token(int(time.time()) - 9 * 3600),
                  "fresh-non-ascii": f"{int(time.time())}.é"}
    form = {key: tokens.get(value, value) if key == "csrf_token" else value for key, value in form.items()}
    response = admin.post("/dashboard/replay", auth=ADMIN, data=form, headers=headers)
    assert response.status_code == status
    assert outbox_states(admin_app) == [("dead", 6)]


@pytest.mark.parametrize("value, masked", [
    ("+491701234567", "+********4567"),
    ("0170 123 4567", "**** *** 4567"),
    ("1234", "1234"),
    ("", ""),
    (None, ""),
])
def test_mask_phone_keeps_only_the_last_four_digits(value, masked):
    assert dashboard.mask_phone(value) == masked


@pytest.mark.parametrize("key, value, shown", [
    ("password", "hunter2", "[hidden]"),
    ("AuthToken", "abc", "[hidden]"),
    ("X-Twilio-Signature", "sig", "[hidden]"),
    ("Body", "hello there", "[11 characters hidden]"),
    ("mms_attachment[0].content", "aGVsbG8=", "[8 characters hidden]"),
    ("MediaUrl0", "https://api.twilio.com/m/ME1", "[28 characters hidden]"),
    ("MediaContentType0", "image/jpeg", "image/jpeg"),
    ("To", "+491701234567", "+********4567"),
    ("WaId", "4915112345678", "*********5678"),  # Twilio's WhatsApp sender: a number named like an id
    ("message_id", "123456789012", "123456789012"),
    # An "id" that starts with + is a phone number, not a message's id.
    ("sender_id", "+4915112345678", "+*********5678"),
    ("subscriberId", " +491511234567", " +********4567"),
    ("status", "undeliverable to 491701234567", "undeliverable to ********4567"),
    ("note", "call 0151-1234-5678 or +49 151 1234 5678", "call ****-****-5678 or +** *** **** 5678"),
    # SAP Digital Interconnect's event time: digit runs the operator must read as they came.
    ("date", "01122026", "01122026"),
    ("time", "101500", "101500"),
    ("timestamp", "20261201101500", "20261201101500"),
])
def test_safe_params_hides_secrets_and_bodies_and_masks_numbers(key, value, shown):
    assert dashboard.safe_params({key: value}) == {key: shown}


@pytest.mark.parametrize("value, ceiling", [(0, 1), (1, 1), (3, 5), (7, 10), (12, 20), (250, 500), (1000, 1000)])
def test_nice_ceiling_rounds_up_to_1_2_or_5_times_a_power_of_ten(value, ceiling):
    assert nice_ceiling(value) == ceiling


def test_stacked_bar_svg_stacks_segments_and_escapes_labels():
    chart = StackedBars(title="<b>t</b>", categories=["a", "b"], series={"OK": [2, 0], "<x>": [1, 4]},
                        colours={"OK": "#00ff00"})
    svg = str(stacked_bar_svg(chart))
    assert svg.count('<rect class="bar"') == 3
    assert "<title>b &lt;x&gt;: 4</title>" in svg and "<b>" not in svg
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', svg)]
    assert heights[0] == pytest.approx(2 * heights[1])  # 2 and 1 on an axis up to 5


@pytest.mark.parametrize("age, text", [
    (None, "–"),
    (timedelta(seconds=42), "0 min 42 s"),
    (timedelta(minutes=61, seconds=5), "1 h 1 min"),
    (timedelta(days=2, hours=3, minutes=4), "2 d 3 h"),
])
def test_format_age_shows_the_two_largest_units(age, text):
    assert format_age(age) == text


def test_replay_keeps_the_selected_vendor(admin_app, admin):
    response = admin.post("/dashboard/replay", auth=ADMIN,
                          data={"csrf_token": page_token(admin), "confirm": "yes", "vendor": "twilio"})
    assert response.headers["Location"].endswith("/dashboard?vendor=twilio&replayed=0")


def test_hour_labels_always_include_the_current_hour():
    hours = [f"{hour:02}:00" for hour in range(24)]
    svg = str(stacked_bar_svg(StackedBars(title="t", categories=hours, series={"OK": [1] * 24}, colours={})))
    labels = re.findall(r'<text class="category"[^>]*>([^<]+)</text>', svg)
    assert labels[-1] == "23:00" and len(labels) == 8
