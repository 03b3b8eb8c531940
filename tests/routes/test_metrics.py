"""GET /metrics: request, ingest, queue and worker metrics in Prometheus text format."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, insert, text
from werkzeug import Request, Response

from models import OutboundMessage, OutboxItem, db
from models.counters import WorkerCounter
from services.clock import utcnow
from services.forwarder import Forwarder
from services.metrics import worker_tally
from tests.pg import free_port
from tests.records import insert_client

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": "s3cret-ops"}
CLIENT_ID = uuid.UUID("0b9c3f4e-6a1d-4c8e-9f2a-7d5e1b3c9a00")
TOKEN_PATH = "/oauth2/token"
DURATION_COUNT = "flask_http_request_duration_seconds_count"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Return every sample of a scrape keyed by name and label set, parsed by prometheus_client."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(scrape: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Return one sample's value, or 0 when the scrape lacks it."""
    return scrape.get((name, frozenset(labels.items())), 0.0)


def scrape(client, **headers: str) -> dict[tuple[str, frozenset], float]:
    """Fetch /metrics and return its samples."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data[:300]
    assert response.content_type.startswith("text/plain")
    return samples(response.get_data(as_text=True))


@pytest.fixture(autouse=True)
def empty_worker_tally():
    """Forget worker counts buffered by earlier tests that never reached the database."""
    worker_tally.take()


@pytest.fixture
def metrics_app(make_app):
    """Return an app whose database metrics are read on every scrape."""
    return make_app(METRICS_CACHE_SECONDS=0)


def genesys_receipt(client, message_id: str, state: str) -> None:
    """Push one Genesys delivery receipt."""
    form = {"type": "receipt", "message_id": message_id, "message_state": state, "result_code": "0"}
    assert client.post("/vendors/genesys/delivery-reports", data=form).status_code == 200


def sapdi_notification(client, order_id: str) -> None:
    """Push one SAP Digital Interconnect notification (a temporary failure)."""
    query = f"orderID={order_id}&time=080000&date=02012018&msisdn=4915112345&status=0xDBF3 absent subscriber"
    assert client.get("/api/v1/notifications/set?" + query).status_code == 200


def test_reports_are_counted_by_vendor_outcome_and_redelivery(metrics_app):
    client = metrics_app.test_client()
    before = scrape(client)
    genesys_receipt(client, "g-1", "2")
    genesys_receipt(client, "g-2", "2")
    genesys_receipt(client, "g-3", "5")
    genesys_receipt(client, "g-3", "5")  # a redelivery of the same request
    sapdi_notification(client, "s-1")
    after = scrape(client)
    expected = {("genesys", "DELIVERED", "stored"): 2, ("genesys", "HARDBOUNCE", "stored"): 1,
                ("genesys", "HARDBOUNCE", "duplicate"): 1, ("sapdi", "SOFTBOUNCE", "stored"): 1,
                ("sapdi", "DELIVERED", "stored"): 0}
    for (vendor, outcome, result), count in expected.items():
        labels = {"vendor": vendor, "outcome": outcome, "result": result}
        assert value(after, "sms_reports_ingested_total", **labels) \
            - value(before, "sms_reports_ingested_total", **labels) == count, labels


def test_requests_are_counted_by_route_and_status_without_callback_tokens(metrics_app):
    client = metrics_app.test_client()
    for _ in range(2):
        client.get("/health")
    client.get("/vendors/genesys/clients/secret-token-123/delivery-reports")
    client.get("/no/such/page")
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    after = samples(text)
    assert value(after, DURATION_COUNT, method="GET", route="/health", status="200") == 2
    assert value(after, DURATION_COUNT, method="GET", route="<unmatched>", status="404") == 1
    assert value(after, "flask_http_request_duration_seconds_bucket", method="GET", route="/health",
                 status="200", le="+Inf") == 2
    assert "secret-token-123" not in text


def test_a_made_up_method_is_a_json_501_and_adds_no_series(metrics_app):
    client = metrics_app.test_client()
    scrape(client)  # the scrape's own series exist from here on
    before = len(scrape(client))
    for method in ("ABCDE", "FGHIJ", "KLMNO"):
        response = client.open("/health", method=method)
        assert response.status_code == 501
        assert response.get_json()["field"] == "method"
    after = scrape(client)
    assert not any(dict(labels).get("method") in {"ABCDE", "FGHIJ", "KLMNO"} for _, labels in after)
    assert len(after) == before


def add_outbound(states: dict[str, int]) -> None:
    """Insert campaign messages in the given states."""
    now = utcnow()
    rows = [dict(public_id=uuid.uuid4().hex, client_id=CLIENT_ID, emarsys_message_id=f"em-{uuid.uuid4().hex}",
                 source="ACME", destination="+491511234567", body="hello", state=state, attempts=0,
                 next_attempt_at=now, created_at=now, updated_at=now)
            for state, count in states.items() for _ in range(count)]
    db.session.execute(insert(OutboundMessage), rows)
    db.session.commit()


def add_outbox(states: dict[str, int], age: timedelta = timedelta(0), kind: str = "delivery_report") -> None:
    """Insert outbox items in the given states, created `age` ago."""
    created = utcnow() - age
    rows = [dict(client_id=CLIENT_ID, kind=kind, message_key=f"m-{uuid.uuid4().hex}",
                 payload={"emarsysMessageId": "em-1"}, event_at=created, state=state, attempts=0,
                 next_attempt_at=created, created_at=created)
            for state, count in states.items() for _ in range(count)]
    db.session.execute(insert(OutboxItem), rows)
    db.session.commit()


def test_queue_gauges_come_from_the_database(metrics_app):
    with metrics_app.app_context():
        add_outbound({"queued": 3, "sending": 1, "sent": 4, "failed": 2})
        add_outbox({"pending": 2, "leased": 1, "dead": 2, "done": 5}, age=timedelta(minutes=10))
        add_outbox({"pending": 1})
    after = scrape(metrics_app.test_client())
    outbound = {state: value(after, "sms_outbound_messages", state=state)
                for state in ("queued", "sending", "sent", "failed", "cancelled")}
    assert outbound == {"queued": 3, "sending": 1, "sent": 4, "failed": 2, "cancelled": 0}
    assert {state: value(after, "sms_outbox_items", state=state) for state in ("pending", "leased", "dead")} == {
        "pending": 3, "leased": 1, "dead": 2}
    assert value(after, "sms_outbox_depth") == 4
    assert value(after, "sms_outbox_dead_letters") == 2
    assert 600 <= value(after, "sms_outbox_oldest_pending_age_seconds") < 3600
    assert value(after, "sms_metrics_database_up") == 1


def test_an_empty_outbox_has_no_pending_age(metrics_app):
    after = scrape(metrics_app.test_client())
    assert (value(after, "sms_outbox_depth"), value(after, "sms_outbox_oldest_pending_age_seconds")) == (0, 0)
    assert value(after, "sms_oauth_token_refreshes_total") == 0


class FakeEmarsys:
    """A token endpoint and Emarsys callback endpoints answering each batch with the next queued status."""

    def __init__(self, httpserver, statuses: list[int]):
        self.statuses = statuses
        self.tokens_issued = 0
        httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(self.token)
        httpserver.expect_request(f"/v1/clients/{CLIENT_ID}/deliveryReports").respond_with_handler(self.batch)
        httpserver.expect_request(f"/v1/clients/{CLIENT_ID}/inboundMessages").respond_with_handler(self.batch)

    def token(self, request: Request) -> Response:
        """Issue an opaque token valid for an hour."""
        self.tokens_issued += 1
        body = {"access_token": f"token-{self.tokens_issued}", "token_type": "bearer", "expires_in": 3600}
        return Response(json.dumps(body), status=200, content_type="application/json")

    def batch(self, request: Request) -> Response:
        """Answer a callback batch with the next status."""
        return Response("{}", status=self.statuses.pop(0), content_type="application/json")


def test_emarsys_call_results_and_token_refreshes_reach_another_process_through_the_database(
        make_app, httpserver):
    fake = FakeEmarsys(httpserver, statuses=[202, 503])
    worker_app = make_app(PARTNER_OAUTH_TOKEN_URL=httpserver.url_for(TOKEN_PATH), PARTNER_OAUTH_CLIENT_ID="p",
                          PARTNER_OAUTH_CLIENT_SECRET="s", EMARSYS_API_BASE_URL=httpserver.url_for("/v1"),
                          FORWARD_LINGER_MS=0)
    with worker_app.app_context():
        insert_client(CLIENT_ID)
        # The older group is sent first, so it gets the first answer.
        add_outbox({"pending": 2}, age=timedelta(seconds=30))
        add_outbox({"pending": 1}, kind="inbound_message")
        assert Forwarder.from_config(worker_app.config, "worker-1").run_once() == 3
    assert fake.tokens_issued == 1 and fake.statuses == []
    # A web app of its own: only the database connects it to the worker.
    after = scrape(make_app(METRICS_CACHE_SECONDS=0).test_client())
    assert value(after, "sms_emarsys_calls_total", kind="delivery_report", result="delivered") == 1
    assert value(after, "sms_emarsys_calls_total", kind="inbound_message", result="retry") == 1
    assert value(after, "sms_oauth_token_refreshes_total") == 1
    assert value(after, "sms_outbox_items", state="pending") == 1


def test_database_metrics_are_cached_between_close_scrapes(make_app):
    app = make_app(METRICS_CACHE_SECONDS=3600)
    client = app.test_client()
    assert value(scrape(client), "sms_outbox_depth") == 0
    with app.app_context():
        add_outbox({"pending": 2})
    assert value(scrape(client), "sms_outbox_depth") == 0
    assert value(scrape(make_app(METRICS_CACHE_SECONDS=0).test_client()), "sms_outbox_depth") == 2


def test_a_database_outage_is_reported_as_a_metric_not_an_error(make_app):
    dead = f"postgresql+psycopg2://test@127.0.0.1:{free_port()}/none"
    after = scrape(make_app(SQLALCHEMY_DATABASE_URI=dead, METRICS_CACHE_SECONDS=0).test_client())
    assert value(after, "sms_metrics_database_up") == 0
    assert ("sms_outbox_depth", frozenset()) not in after


DATABASE_SERIES = ("sms_outbound_", "sms_outbox_", "sms_emarsys_", "sms_oauth_")


def database_series(scrape: dict[tuple[str, frozenset], float]) -> dict[tuple[str, frozenset], float]:
    """Return the samples of a scrape that are read from the database."""
    return {key: number for key, number in scrape.items() if key[0].startswith(DATABASE_SERIES)}


@pytest.fixture
def doomed_database(postgres) -> Iterator[tuple[str, Callable[[], None]]]:
    """Create a database of its own; return its URL and a function that drops it under the app's feet."""
    name = f"sms_metrics_outage_{uuid.uuid4().hex[:8]}"
    engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with engine.connect() as connection:
            # FORCE ends the app's pooled connections too, as a database restart would.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres.database_url(name), drop
    drop()
    engine.dispose()


def test_during_a_database_outage_the_gauges_keep_their_last_values(make_app, doomed_database):
    url, drop = doomed_database
    app = make_app(SQLALCHEMY_DATABASE_URI=url, METRICS_CACHE_SECONDS=0)
    with app.app_context():
        db.create_all()
        add_outbound({"queued": 2})
        add_outbox({"pending": 1, "dead": 3})
        db.session.add(WorkerCounter(name="emarsys_calls", labels='{"kind":"delivery_report","result":"delivered"}',
                                     value=7, updated_at=utcnow()))
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    before = scrape(client)
    assert value(before, "sms_metrics_database_up") == 1
    drop()
    for _ in range(2):  # the pooled connection breaks, then no new one can be made
        during = scrape(client)
        assert value(during, "sms_metrics_database_up") == 0
        assert database_series(during) == database_series(before)
    assert len(database_series(before)) >= 10
    assert value(during, "sms_outbox_dead_letters") == 3
    assert value(during, "sms_emarsys_calls_total", kind="delivery_report", result="delivered") == 7


@pytest.fixture
def locked_outbox(database_url) -> Iterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on the outbox, as a migration rewriting it would, for up to 20 s."""
    engine = create_engine(database_url)
    connection = engine.connect()
    connection.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
    release = threading.Timer(20, connection.rollback)
    release.start()
    yield
    release.cancel()
    connection.rollback()
    connection.close()
    engine.dispose()


def test_a_scrape_answers_soon_while_the_database_does_not(make_app, locked_outbox):
    started = time.monotonic()
    production_timeouts = {"connect_args": {"options": "-c statement_timeout=10000"}}  # config.py's
    after = scrape(make_app(METRICS_CACHE_SECONDS=0, SQLALCHEMY_ENGINE_OPTIONS=production_timeouts).test_client())
    # Prometheus gives up on a scrape after 10 s by default, and with it on every series.
    assert time.monotonic() - started < 8
    assert value(after, "sms_metrics_database_up") == 0


@pytest.mark.parametrize("settings, credentials, status", [
    ({}, None, 200),
    (ADMIN, None, 401),
    (ADMIN, ("ops", "wrong"), 401),
    (ADMIN, ("ops", "s3cret-ops"), 200),
])
def test_metrics_need_the_admin_credentials_once_they_are_set(make_app, settings, credentials, status):
    client = make_app(**settings).test_client()
    response = client.get("/metrics", auth=credentials)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic")


MULTIPROCESS_SCRIPT = """
import os, sys
from app import create_app

def serve(requests):
    app = create_app({"SQLALCHEMY_DATABASE_URI": sys.argv[1], "TESTING": True})
    client = app.test_client()
    for _ in range(requests):
        assert client.get("/health").status_code == 200
    return client

child = os.fork()
if child == 0:  # a second web process, as a gunicorn worker would be
    serve(2)
    os._exit(0)
assert os.waitpid(child, 0)[1] == 0
client = serve(3)
with open(sys.argv[2], "w", encoding="utf-8") as scrape_file:
    scrape_file.write(client.get("/metrics").get_data(as_text=True))
"""


def test_with_a_multiprocess_dir_a_scrape_adds_up_every_web_process(database_url, tmp_path):
    multiprocess_dir, scrape_file = tmp_path / "prometheus", tmp_path / "scrape.txt"
    multiprocess_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiprocess_dir), "PRODUCTION": "false"}
    done = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT, database_url, str(scrape_file)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    after = samples(scrape_file.read_text(encoding="utf-8"))
    assert value(after, DURATION_COUNT, method="GET", route="/health", status="200") == 5
    assert value(after, "sms_metrics_database_up") == 1


VENDOR_COUNT = "sms_vendor_request_duration_seconds_count"


def test_vendor_pushes_are_timed_by_route_and_status_once(metrics_app):
    client = metrics_app.test_client()
    before = scrape(client)
    genesys_receipt(client, "g-1", "2")
    sapdi_notification(client, "s-1")
    client.post("/vendors/nobody/delivery-reports")
    client.get("/vendors/genesys/clients/secret-token-123/delivery-reports")
    response = client.get("/metrics")
    text, after = response.get_data(as_text=True), samples(response.get_data(as_text=True))
    expected = {("POST", "/vendors/<vendor>/delivery-reports", "200"): 1,
                ("GET", "/api/v1/notifications/set", "200"): 1,
                ("POST", "/vendors/<vendor>/delivery-reports", "404"): 1,
                ("GET", "/vendors/<vendor>/clients/<token>/delivery-reports", "404"): 1}
    for (method, route, status), count in expected.items():
        labels = {"method": method, "route": route, "status": status}
        assert value(after, VENDOR_COUNT, **labels) - value(before, VENDOR_COUNT, **labels) == count, labels
    # Counted here instead of by the Flask exporter, not by both.
    assert "/vendors/" not in "".join(line for line in text.splitlines() if line.startswith("flask_http"))
    assert "secret-token-123" not in text
