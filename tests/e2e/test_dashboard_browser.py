"""The operator dashboard in real headless Chromium, against a real server on the test PostgreSQL."""
from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, sync_playwright
from sqlalchemy import func, select, update
from werkzeug.serving import make_server

from mappers.report import DeliveryReport, Outcome
from models import OutboxItem, db
from services.clock import utcnow
from services.ingest import record_delivery_report
from tests.records import insert_client

CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN = {"username": "operator", "password": "e2e-Pa55-word"}
CLIENT_ID = uuid.UUID("7f1e2d3c-4b5a-4968-8776-655443322110")
EMARSYS_ID = "em-e2e-1"


@pytest.fixture
def admin_app(make_app):
    """Return the service with the dashboard enabled."""
    return make_app(ADMIN_USERNAME=ADMIN["username"], ADMIN_PASSWORD=ADMIN["password"])


@pytest.fixture
def base_url(admin_app) -> Iterator[str]:
    """Serve the app with a real threaded HTTP server on 127.0.0.1 and return its URL."""
    server = make_server("127.0.0.1", 0, admin_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Start Debian's Chromium headless with a fresh profile and the admin's Basic credentials."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `make test` (it installs Debian's chromium) "
                    "or `apt-get install chromium`", pytrace=False)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, http_credentials=ADMIN)
        yield context
        context.close()


def report(vendor: str, vendor_message_id: str, outcome: Outcome, status_text: str, minutes: int = 0,
           client_id: uuid.UUID | None = None, emarsys_message_id: str | None = None) -> None:
    """Ingest one delivery report the way a vendor callback does."""
    delivery = DeliveryReport(vendor_message_id=vendor_message_id, recipient="+491701234567", status_code="1",
                              status_text=status_text, event_at=utcnow() + timedelta(minutes=minutes),
                              outcome=outcome)
    params = {"message_id": vendor_message_id, "status": status_text, "minutes": str(minutes)}
    record_delivery_report(vendor, delivery, params, client_id=client_id, emarsys_message_id=emarsys_message_id)


def create_traffic(app) -> None:
    """Store one client message with two reports, both forwards dead, plus other vendors' reports."""
    with app.app_context():
        insert_client(CLIENT_ID)
        report("genesys", "g-e2e-1", Outcome.ACCEPTED, "accepted", 0, CLIENT_ID, EMARSYS_ID)
        report("genesys", "g-e2e-1", Outcome.HARDBOUNCE, "absent subscriber", 1, CLIENT_ID, EMARSYS_ID)
        for index in range(3):
            report("genesys", f"g-ok-{index}", Outcome.DELIVERED, "delivered")
        for index in range(2):
            report("twilio", f"t-soft-{index}", Outcome.SOFTBOUNCE, "queue full")
        db.session.execute(update(OutboxItem).values(state="dead", attempts=6, last_error="HTTP 400 from Emarsys"))
        db.session.commit()


def dead_letters(app) -> int:
    """Count dead letters in the database."""
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(OutboxItem).where(OutboxItem.state == "dead"))


def watch_for_errors(page: Page) -> list[str]:
    """Collect console errors and uncaught page errors."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    return errors


def series_total(page: Page, series: str) -> int:
    """Sum the counts of one outcome's bar segments in the rendered chart."""
    segments = page.locator(f'svg.chart rect.bar[data-series="{series}"]')
    return sum(int(segments.nth(index).get_attribute("data-count")) for index in range(segments.count()))


def read_chart(page: Page, base_url: str) -> None:
    """Open the dashboard, check the chart of every vendor, then pick one vendor."""
    assert page.goto(f"{base_url}/dashboard").status == 200
    assert page.locator("#chart-total").inner_text().startswith("7 delivery report(s)")
    assert series_total(page, "SOFTBOUNCE") == 2
    with page.expect_navigation(url="**/dashboard?vendor=genesys"):
        page.select_option("#vendor", "genesys")
    assert (series_total(page, "DELIVERED"), series_total(page, "HARDBOUNCE"), series_total(page, "SOFTBOUNCE")) \
        == (3, 1, 0)
    delivered = page.locator('svg.chart rect.bar[data-series="DELIVERED"]').first.bounding_box()
    assert delivered is not None and delivered["height"] > 0 and delivered["width"] > 0


def search_history(page: Page, screenshot: Path) -> None:
    """Search the client message by its Emarsys id and check every part of its history."""
    page.fill("#message-id", EMARSYS_ID)
    page.click("#search-button")
    page.wait_for_selector("#history")
    assert page.locator("#raw-events tbody tr").count() == 2
    assert page.locator("#states").inner_text().count("HARDBOUNCE") == 1
    assert page.locator("#bounces-history").count() == 0  # an Emarsys client's message: no SAP bounce
    assert page.locator("#forwarding-attempts tbody tr").count() == 2
    assert "+491701234567" not in page.content()
    page.screenshot(path=str(screenshot), full_page=True)


def replay_dead_letters(page: Page, app) -> None:
    """Decline the confirmation once (nothing happens), then accept it and see the dead letters go."""
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.click("#replay-button")
    assert questions == ["Re-queue 2 dead letter(s) for forwarding to Emarsys?"]
    assert (page.locator("#dead-letters").inner_text(), dead_letters(app)) == ("2", 2)

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation(url="**/dashboard?vendor=genesys&replayed=2"):
        page.click("#replay-button")
    assert page.locator("#replay-notice").inner_text() == "Re-queued 2 dead letter(s) for forwarding."
    assert (page.locator("#dead-letters").inner_text(), page.locator("#outbox-depth").inner_text()) == ("0", "2")
    assert dead_letters(app) == 0


def test_operator_logs_in_reads_the_chart_searches_and_replays(admin_app, base_url, browser, tmp_path):
    create_traffic(admin_app)
    page = browser.new_page()
    errors = watch_for_errors(page)

    read_chart(page, base_url)
    search_history(page, tmp_path / "history.png")
    replay_dead_letters(page, admin_app)

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0 and (tmp_path / "history.png").stat().st_size > 0
    assert errors == []
