"""Shared pieces of the benchmarks: the stack they start, load drivers, results and tables.

Every benchmark starts its own throwaway PostgreSQL (tests/pg.py), migrates it with
`flask db upgrade`, runs the service under gunicorn with production settings and, where
needed, the fake vendor and Emarsys servers of bench/fakes.py. Load comes from separate
processes on loopback (wrk, or a small Python client), so the figures include HTTP.
"""
from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg2
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.pg import ThrowawayPostgres, free_port, wait_for_port  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
WRK_DIR = REPO / "bench" / "wrk"
BIN = Path(sys.executable).parent
DATABASE_NAME = "bench"
SAP_USER, SAP_PASSWORD = "sap-bench", "sap-bench-password"
ADMIN_USER, ADMIN_PASSWORD = "admin-bench", "admin-bench-password"
# Sync workers, as in production; 4 measured best on 2 cores (see docs/performance.md).
GUNICORN_WORKERS = int(os.environ.get("BENCH_GUNICORN_WORKERS", "4"))
LOG_DIR = Path(tempfile.gettempdir()) / "sms-status-bench-logs"


def utc_now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string with seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Describe the machine the figures were taken on."""
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "date": utc_now_iso(),
            "python": platform.python_version(), "kernel": platform.release()}


# ---------------------------------------------------------------- processes


@dataclass
class Process:
    """A child process with its output in a log file; stopped by its own pid only."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process to stop (SIGTERM), then kill it if it does not."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def tail(self, lines: int = 20) -> str:
        """Return the last lines of the process's log, to explain a failure."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_process(name: str, command: Sequence[str], env: dict[str, str] | None = None) -> Process:
    """Start a command from the repository root with its output in a log file."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=log_file,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Process(name, popen, log_path)


@contextmanager
def running(process: Process) -> Iterator[Process]:
    """Stop the process when the block ends, however it ends."""
    try:
        yield process
    finally:
        process.stop()


# ---------------------------------------------------------------- database


class BenchDatabase:
    """A throwaway PostgreSQL cluster with the service's schema migrated into database `bench`."""

    def __init__(self) -> None:
        self.server = ThrowawayPostgres()

    @property
    def url(self) -> str:
        """Return the SQLAlchemy URL the service connects with."""
        return self.server.database_url(DATABASE_NAME)

    def connect(self):
        """Return a new psycopg2 connection to the bench database (autocommit)."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.server.port, user="test", dbname=DATABASE_NAME)
        conn.autocommit = True
        return conn

    def start(self, env: dict[str, str]) -> BenchDatabase:
        """Start the cluster, create the database and migrate it with `flask db upgrade`."""
        self.server.start()
        admin = psycopg2.connect(host="127.0.0.1", port=self.server.port, user="test", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE_NAME}")
        admin.close()
        subprocess.run([str(BIN / "flask"), "--app", "app", "db", "upgrade"], cwd=REPO, env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        return self

    def scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        """Run one query and return the first column of its first row."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                row = cur.fetchone()
        finally:
            conn.close()
        return row[0] if row else None

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        self.server.stop()


# ---------------------------------------------------------------- the service


ENCRYPTION_KEY = Fernet.generate_key().decode()


def app_env(database_url: str, **settings: str) -> dict[str, str]:
    """Return the environment of the service in production mode on the bench database."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("VCAP_", "DATABASE_", "SAP_", "ADMIN_", "EMARSYS_", "PARTNER_",
                                   "DISPATCH_", "FORWARD_", "SEND_", "LEASE_"))}
    env.update({
        "DATABASE_URL": database_url, "PRODUCTION": "true",
        "SAP_STATUS_USERNAME": SAP_USER, "SAP_STATUS_PASSWORD": SAP_PASSWORD,
        "ADMIN_USERNAME": ADMIN_USER, "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CONFIG_ENCRYPTION_KEY": ENCRYPTION_KEY, "STATUS_PAGE_SIZE": "100",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8080", "PYTHONUNBUFFERED": "1",
    })
    env.update(settings)
    return env


def start_gunicorn(name: str, wsgi_target: str, env: dict[str, str],
                   workers: int = GUNICORN_WORKERS) -> tuple[Process, int]:
    """Run a WSGI app under gunicorn with sync workers and no access log; return it and its port."""
    port = free_port()
    command = [str(BIN / "gunicorn"), "-k", "sync", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--log-level", "warning", "--graceful-timeout", "5", wsgi_target]
    process = start_process(name, command, env)
    try:
        wait_for_port(port, timeout=30)
    except TimeoutError:
        process.stop()
        raise RuntimeError(f"{name} did not start:\n{process.tail()}") from None
    return process, port


def wait_until_answers(port: int, path: str, timeout: float = 30.0) -> None:
    """Block until GET path answers below 500, i.e. a worker has booted the app."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_request(port, "GET", path).status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer and how long it took, in milliseconds."""

    status: int
    body: bytes
    millis: float


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> Answer:
    """Send one request on a new connection (sync workers close it anyway) and time it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return Answer(response.status, data, (time.perf_counter() - started) * 1000)


# ---------------------------------------------------------------- fakes


@contextmanager
def fake_servers(jwks: dict | None = None, genesys_delay_ms: float = 20.0) -> Iterator[str]:
    """Run bench/fakes.py (Genesys, Emarsys, token service, JWKS) and yield its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "bench.fakes", "--port", str(port),
               "--genesys-delay-ms", str(genesys_delay_ms)]
    if jwks is not None:
        jwks_file = LOG_DIR / "jwks.json"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        jwks_file.write_text(json.dumps(jwks))
        command += ["--jwks-file", str(jwks_file)]
    with running(start_process("fakes", command)) as process:
        try:
            wait_for_port(port, timeout=15)
        except TimeoutError:
            raise RuntimeError(f"fake servers did not start:\n{process.tail()}") from None
        yield f"http://127.0.0.1:{port}"


def fake_stats(base_url: str) -> dict[str, Any]:
    """Return what the fakes received: per endpoint, requests, items, first and last time."""
    port = int(base_url.rsplit(":", 1)[1])
    return json.loads(http_request(port, "GET", "/_stats").body)


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class WrkRun:
    """What wrk's done() reported (bench/wrk/summary.lua)."""

    requests: int
    non_2xx: int
    socket_errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def acknowledged(self) -> int:
        """Return the requests answered 2xx (wrk counts status > 399 as errors; none redirect)."""
        return self.requests - self.non_2xx

    @property
    def per_second(self) -> float:
        """Return answered requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(url: str, script: str, seconds: float, connections: int, threads: int = 1,
            script_args: Sequence[str] = ()) -> WrkRun:
    """Drive load with wrk for a bounded time and return its summary."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does it as root)")
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", "10s", "-s", str(WRK_DIR / script), url, *(["--", *script_args] if script_args else [])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            raw = json.loads(line[len("WRK_JSON "):])
            return WrkRun(requests=raw["requests"], non_2xx=raw["non_2xx"],
                          socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                          seconds=raw["duration_us"] / 1e6, p50_ms=raw["p50_us"] / 1000,
                          p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000)
    raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the value below which `fraction` of the values lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """Return the median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def wait_for(condition, timeout: float, interval: float = 0.1) -> bool:
    """Poll `condition()` until it is true or the timeout passes; return whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Check:
    """One target and whether the measured value meets it."""

    name: str
    value: float
    target: str
    met: bool
    unit: str = ""


@dataclass
class Result:
    """The outcome of one benchmark: figures, targets, the machine, and what limits it."""

    name: str
    title: str
    figures: dict[str, Any]
    checks: list[Check]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        """Return whether every target is met."""
        return all(check.met for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document written to bench/results/<name>.json."""
        return {"name": self.name, "title": self.title, "met": self.met,
                "target": "; ".join(f"{check.name} {check.target}" for check in self.checks),
                "checks": [vars(check) for check in self.checks], "figures": self.figures,
                "settings": self.settings, "notes": self.notes, "machine": machine()}


def format_value(value: Any) -> str:
    """Render a figure compactly: floats with sensible precision, the rest as text."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Render rows as a plain-text table with aligned columns."""
    cells = [[str(h) for h in header]] + [[format_value(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def report(result: Result) -> Path:
    """Print the benchmark's table and write bench/results/<name>.json."""
    rows = [(name, value, "", "") for name, value in result.figures.items()]
    rows += [(check.name, check.value, check.target, "met" if check.met else "NOT MET") for check in result.checks]
    print(f"\n{result.title}\n")
    print(table(rows, ("figure", "value", "target", "")))
    for note in result.notes:
        print(f"- {note}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{result.name}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    print(f"\nwritten: {path.relative_to(REPO)}")
    return path
