"""Prometheus metrics for `GET /metrics`, correct across gunicorn workers and the separate worker process.

Three sources, because the service runs as several processes:

- Request counts and latencies, and reports ingested, are counted in the web process that
  served the request (prometheus-flask-exporter and prometheus_client). With
  PROMETHEUS_MULTIPROC_DIR set, prometheus_client keeps them in files in that directory and a
  scrape adds up every gunicorn worker's files; without it, one process's registry is served.
- Queue state (outbound messages by state, outbox depth, oldest pending age, dead letters) is
  read from the database at scrape time by `DatabaseCollector`, cached for a few seconds.
- Worker events (Emarsys call results, token refreshes) happen in the `flask worker` process,
  possibly in another container: they are buffered in memory and added to the
  `worker_counters` table inside the forwarder's acknowledge transaction, and the collector
  reads them back from there.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

from flask import Flask, Request, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from sqlalchemy import case, func, text
from sqlalchemy.exc import SQLAlchemyError

from logging_setup import STARTED_ENVIRON_KEY
from mappers.report import Outcome
from models import OutboundMessage, OutboxItem, db, dialect_insert
from models.counters import WorkerCounter
from services.clock import utcnow

log = logging.getLogger(__name__)

OUTBOUND_STATES = ("queued", "sending", "sent", "failed", "cancelled")
# Done items pile up until retention purges them; counting them would cost a scan per scrape.
OUTBOX_STATES = ("pending", "leased", "dead")
WAITING_OUTBOX_STATES = ("pending", "leased")
EMARSYS_CALLS = "emarsys_calls"
TOKEN_REFRESHES = "oauth_token_refreshes"
DEFAULT_CACHE_SECONDS = 5.0
# Prometheus drops the whole scrape after 10 s by default, so the queries of one together stay under it.
DEFAULT_DATABASE_TIMEOUT_MS = 2000
UNMATCHED_ROUTE = "<unmatched>"

REPORTS_INGESTED = Counter(
    "sms_reports_ingested", "Vendor delivery reports received, by vendor, outcome and whether stored or a redelivery",
    ["vendor", "outcome", "result"], registry=None)
# Vendor pushes are timed here, not by the Flask exporter: after a campaign they arrive by the
# thousand per second, and the exporter's generic per-request bookkeeping cost more CPU than the
# receipt's own mapping and storing (bench/ingest.py). Same labels as the exporter's metric.
VENDOR_REQUESTS = Histogram(
    "sms_vendor_request_duration_seconds", "Vendor pushes (delivery reports, inbound messages) by route and status",
    ["method", "route", "status"], registry=None)
# The views of vendor pushes wear this (prometheus-flask-exporter's own opt-out), so the exporter
# skips them at the cost of one attribute check instead of matching their paths.
untracked_by_exporter = PrometheusMetrics.do_not_track()
PROCESS_COUNTERS = (REPORTS_INGESTED, VENDOR_REQUESTS)

WORKER_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    EMARSYS_CALLS: ("sms_emarsys_calls", "Batches posted to Emarsys, by kind and result "
                    "(delivered, retry, item_errors, rejected)", ("kind", "result")),
    TOKEN_REFRESHES: ("sms_oauth_token_refreshes", "Partner OAuth access tokens fetched by the worker", ()),
}


class Deduplicated(Protocol):
    """An ingest result: services.ingest.IngestResult, which cannot be imported here (it imports us)."""

    duplicate: bool


IngestOutcome = TypeVar("IngestOutcome", bound=Deduplicated)


def count_report(vendor: str, outcome: Outcome, result: IngestOutcome) -> IngestOutcome:
    """Count one ingested delivery report and return its ingest result unchanged."""
    kind = "duplicate" if result.duplicate else "stored"
    labelled(REPORTS_INGESTED, vendor, outcome.value, kind).inc()
    return result


def observe_vendor_request(response: Response) -> Response:
    """Count one vendor push by route and status, with its duration, and return the response."""
    started = request.environ.get(STARTED_ENVIRON_KEY)
    seconds = time.perf_counter() - started if started is not None else 0.0
    labelled(VENDOR_REQUESTS, request.method, route(request), str(response.status_code)).observe(seconds)
    return response


@lru_cache(maxsize=4096)
def labelled(metric: Counter | Histogram, *label_values: str) -> Counter | Histogram:
    """Return the metric's child for these label values, looked up once per process."""
    # Every label value is bounded (vendors, outcomes, route templates, status codes), so the
    # cache is too; prometheus_client's own lookup validates and locks on every call.
    return metric.labels(*label_values)


class WorkerTally:
    """Worker event counts not yet written to the database, safe to add to from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Tally[tuple[str, str]] = Tally()

    def add(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        """Add to the count of one metric and label set."""
        key = (name, json.dumps(labels, sort_keys=True, separators=(",", ":")))
        with self._lock:
            self._counts[key] += amount

    def take(self) -> dict[tuple[str, str], int]:
        """Return the counts gathered so far and start again from zero."""
        with self._lock:
            counts, self._counts = dict(self._counts), Tally()
        return counts


worker_tally = WorkerTally()


def count_token_refresh() -> None:
    """Count one OAuth token fetched; written with the next Emarsys call's acknowledgement."""
    worker_tally.add(TOKEN_REFRESHES, {})


def record_emarsys_call(kind: str, result: str) -> None:
    """Count one Emarsys call and add every buffered worker count to the caller's transaction."""
    worker_tally.add(EMARSYS_CALLS, {"kind": kind, "result": result})
    persist_worker_counts()


def persist_worker_counts() -> None:
    """Add the buffered worker counts to `worker_counters` in the caller's transaction."""
    counts = worker_tally.take()
    if not counts:
        return
    now = utcnow()
    # Sorted rows lock in one order, so two workers' upserts cannot deadlock.
    rows = [{"name": name, "labels": labels, "value": value, "updated_at": now}
            for (name, labels), value in sorted(counts.items())]
    stmt = dialect_insert(WorkerCounter).values(rows)
    db.session.execute(stmt.on_conflict_do_update(
        index_elements=["name", "labels"],
        set_={"value": WorkerCounter.value + stmt.excluded.value, "updated_at": stmt.excluded.updated_at}))


@dataclass(frozen=True)
class QueueSnapshot:
    """Counts read from the database for one scrape."""

    outbound: dict[str, int]
    outbox: dict[str, int]
    oldest_pending_age: float
    worker_counts: list[tuple[str, dict[str, str], int]]


def read_queue_snapshot(timeout_ms: int = DEFAULT_DATABASE_TIMEOUT_MS) -> QueueSnapshot:
    """Read outbound and outbox counts, the oldest waiting item and the worker counters, each within the timeout."""
    if db.engine.dialect.name == "postgresql":
        # A table lock (a migration's) or a slow count would hold the scrape for the global statement timeout.
        db.session.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(timeout_ms)})
    outbound = dict.fromkeys(OUTBOUND_STATES, 0) | dict(db.session.execute(
        db.select(OutboundMessage.state, func.count()).group_by(OutboundMessage.state)).all())
    waiting_since = func.min(case((OutboxItem.state.in_(WAITING_OUTBOX_STATES), OutboxItem.created_at)))
    rows = db.session.execute(db.select(OutboxItem.state, func.count(), waiting_since)
                              .where(OutboxItem.state.in_(OUTBOX_STATES)).group_by(OutboxItem.state)).all()
    outbox = dict.fromkeys(OUTBOX_STATES, 0) | {state: count for state, count, _ in rows}
    oldest = min((since for _, _, since in rows if since is not None), default=None)
    age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
    counters = [(name, json.loads(labels), value) for name, labels, value in db.session.execute(
        db.select(WorkerCounter.name, WorkerCounter.labels, WorkerCounter.value)).all()]
    return QueueSnapshot(outbound, outbox, age, counters)


def queue_families(snapshot: QueueSnapshot) -> list[Metric]:
    """Turn a snapshot into Prometheus metric families."""
    outbound = GaugeMetricFamily("sms_outbound_messages", "Campaign messages by state", labels=["state"])
    for state, count in snapshot.outbound.items():
        outbound.add_metric([state], count)
    outbox = GaugeMetricFamily("sms_outbox_items", "Outbox items not yet done, by state", labels=["state"])
    for state, count in snapshot.outbox.items():
        outbox.add_metric([state], count)
    depth = snapshot.outbox["pending"] + snapshot.outbox["leased"]
    return [outbound, outbox,
            GaugeMetricFamily("sms_outbox_depth", "Outbox items waiting to reach Emarsys", value=depth),
            GaugeMetricFamily("sms_outbox_oldest_pending_age_seconds",
                              "Age of the oldest outbox item waiting to reach Emarsys (0 when none)",
                              value=snapshot.oldest_pending_age),
            GaugeMetricFamily("sms_outbox_dead_letters", "Outbox items given up on, waiting for a replay",
                              value=snapshot.outbox["dead"]),
            *worker_families(snapshot.worker_counts)]


def worker_families(counts: list[tuple[str, dict[str, str], int]]) -> list[Metric]:
    """Return one counter family per known worker counter; unknown names are ignored."""
    families = {name: CounterMetricFamily(metric, doc, labels=list(labels))
                for name, (metric, doc, labels) in WORKER_FAMILIES.items()}
    for name, labels, value in counts:
        family, label_names = families.get(name), WORKER_FAMILIES.get(name, ("", "", ()))[2]
        if family is not None and set(labels) == set(label_names):
            family.add_metric([labels[label] for label in label_names], value)
    for name, family in families.items():
        if not WORKER_FAMILIES[name][2] and not family.samples:
            family.add_metric([], 0)  # a counter without labels is 0 until its first event
    return list(families.values())


class DatabaseCollector(Collector):
    """Collect queue gauges and worker counters from the database at scrape time, with a short cache."""

    def __init__(self, app: Flask, cache_seconds: float = DEFAULT_CACHE_SECONDS,
                 timeout_ms: int = DEFAULT_DATABASE_TIMEOUT_MS):
        self.app = app
        self.cache_seconds = cache_seconds
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0
        self._last_good: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        """Yield the families of the latest snapshot, reading the database when the cache is stale."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached_at >= self.cache_seconds:
                self._cached, self._cached_at = self._read(), now
            families = list(self._cached)
        yield from families

    def _read(self) -> list[Metric]:
        """Read a snapshot in a context (and session) of its own; on failure, report down with the last values."""
        up = GaugeMetricFamily("sms_metrics_database_up", "Whether the last metrics read of the database worked")
        with self.app.app_context():
            try:
                families = queue_families(read_queue_snapshot(self.timeout_ms))
            except SQLAlchemyError as exc:
                db.session.rollback()
                log.warning("metrics: database unavailable: %s", type(exc).__name__)
                up.add_metric([], 0)
                # Series that vanish would resolve the queue alerts during the outage itself.
                return [up, *self._last_good]
            finally:
                db.session.remove()
        up.add_metric([], 1)
        self._last_good = families
        return [up, *families]


def route(request: Request) -> str:
    """Return the URL rule that served the request: bounded label values, and no callback tokens."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


@dataclass(frozen=True)
class AppMetrics:
    """The metrics set-up of one app: its registry, database collector and multiprocess directory."""

    registry: CollectorRegistry
    collector: DatabaseCollector
    multiprocess_dir: str | None

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition and its content type."""
        registry = self.registry
        if self.multiprocess_dir:
            # Every gunicorn worker's counters live in files; the in-process registry holds only ours.
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            registry.register(self.collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def init_metrics(app: Flask) -> AppMetrics:
    """Track every request of the app and keep its metrics set-up in app.extensions["metrics"]."""
    multiprocess_dir = app.config.get("PROMETHEUS_MULTIPROC_DIR") or None
    if multiprocess_dir:
        # prometheus_client writes its first file below right away and fails if the directory is missing.
        Path(multiprocess_dir).mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    PrometheusMetrics(app, path=None, registry=registry, group_by=route)
    for counter in PROCESS_COUNTERS:
        registry.register(counter)
    collector = DatabaseCollector(app, float(app.config.get("METRICS_CACHE_SECONDS", DEFAULT_CACHE_SECONDS)),
                                  int(app.config.get("METRICS_DATABASE_TIMEOUT_MS", DEFAULT_DATABASE_TIMEOUT_MS)))
    registry.register(collector)
    metrics = AppMetrics(registry, collector, multiprocess_dir)
    app.extensions["metrics"] = metrics
    return metrics
