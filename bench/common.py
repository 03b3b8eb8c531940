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
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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

from tests.pg import ThrowawayPostgres, find_pg_bin, free_port, wait_for_port  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
WRK_DIR = REPO / "bench" / "wrk"
BIN = Path(sys.executable).parent
DATABASE_NAME = "bench"
SAP_USER, SAP_PASSWORD = "sap-bench", "sap-bench-password"
ADMIN_USER, ADMIN_PASSWORD = "admin-bench", "admin-bench-password"
# Sync workers, as many as the manifest's default; 3 and 4 measured alike on 2 cores (2026-12-01).
GUNICORN_WORKERS = int(os.environ.get("BENCH_GUNICORN_WORKERS", "4"))
LOG_DIR = Path(tempfile.gettempdir()) / "sms-status-bench-logs"
# Taken when the benchmark starts: other work on the machine skews every figure.
LOAD_AVERAGE_AT_START = os.getloadavg()


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


def postgres_version() -> str:
    """Return the version of the PostgreSQL server binaries the benchmarks start."""
    try:
        done = subprocess.run([str(find_pg_bin() / "postgres"), "--version"], capture_output=True, text=True,
                              timeout=10)
        return done.stdout.strip() or "unknown"
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """Describe the machine the figures were taken on."""
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "date": utc_now_iso(),
            "python": platform.python_version(), "kernel": platform.release(), "postgresql": postgres_version(),
            "load_average_at_start": [round(value, 2) for value in LOAD_AVERAGE_AT_START]}


# ---------------------------------------------------------------- processes


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the `finally` blocks that stop gunicorn, workers, fakes and PostgreSQL.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _exit_on_sigterm)


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
        try:
            admin = psycopg2.connect(host="127.0.0.1", port=self.server.port, user="test", dbname="postgres")
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DATABASE_NAME}")
            admin.close()
            migration = subprocess.run([str(BIN / "flask"), "--app", "app", "db", "upgrade"], cwd=REPO, env=env,
                                       capture_output=True, text=True, timeout=120)
            if migration.returncode != 0:
                raise RuntimeError(f"flask db upgrade failed:\n{migration.stderr[-2000:]}")
        except BaseException:
            self.server.stop()
            raise
        return self

    def scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        """Run one query and return the first column of its first row."""
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        """Run one query and return every row."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def statements_during(self, action: Callable[[], Any]) -> StatementLog:
        """Run `action` and return the statements PostgreSQL received meanwhile, with their server time.

        The server log shows what the driver really sends (BEGIN, pings, each statement, COMMIT):
        one network round trip each, and how long the server took for it (parse, plan, execute).
        """
        log_file = self.server.root / "log"
        self._set_log_min_duration("0")
        offset = log_file.stat().st_size
        try:
            action()
        finally:
            self._set_log_min_duration(None)
        with open(log_file, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return StatementLog.parse(text)

    def _set_log_min_duration(self, value: str | None) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"ALTER SYSTEM SET log_min_duration_statement = {value}" if value
                            else "ALTER SYSTEM RESET log_min_duration_statement")
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        time.sleep(0.5)  # the reload reaches every backend asynchronously

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        self.server.stop()


@dataclass
class StatementLog:
    """Statements from PostgreSQL's log (`log_min_duration_statement = 0`): count and server ms per verb."""

    counts: Counter[str] = field(default_factory=Counter)
    server_ms: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, log_text: str) -> StatementLog:
        """Read `duration: X ms  statement: ...` entries; continuation lines start with a tab."""
        entries: list[str] = []
        for line in log_text.splitlines():
            if line.startswith("\t") and entries:
                entries[-1] += "\n" + line[1:]
            else:
                entries.append(line)
        statements = cls()
        for entry in entries:
            if "duration: " not in entry or "statement: " not in entry or "log_min_duration" in entry:
                continue
            millis = float(entry.split("duration: ", 1)[1].split(" ms", 1)[0])
            verb = statement_verb(entry.split("statement: ", 1)[1])
            statements.counts[verb] += 1
            statements.server_ms[verb] += millis
        return statements

    @property
    def total(self) -> int:
        """Return how many statements were sent."""
        return sum(self.counts.values())

    @property
    def total_server_ms(self) -> float:
        """Return the server time of all statements, in milliseconds."""
        return sum(self.server_ms.values())


def statement_verb(statement: str) -> str:
    """Return the first SQL word of a statement, after any leading `--` comment lines."""
    lines = [line for line in statement.splitlines() if line.strip() and not line.strip().startswith("--")]
    return lines[0].split(None, 1)[0].upper().rstrip(";") if lines else "COMMENT"


# ---------------------------------------------------------------- the service


ENCRYPTION_KEY = Fernet.generate_key().decode()


def app_env(database_url: str, **settings: str) -> dict[str, str]:
    """Return the environment of the service in production mode on the bench database."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("VCAP_", "DATABASE_", "SAP_", "ADMIN_", "EMARSYS_", "PARTNER_",
                                   "DISPATCH_", "FORWARD_", "SEND_", "LEASE_"))}
    env.update({
        "DATABASE_URL": database_url, "PRODUCTION": "true",
        "SAP_STATUS_USERNAME": SAP_USER, "SAP_STATUS_PASSWORD": SAP_PASSWORD,
        "ADMIN_USERNAME": ADMIN_USER, "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CONFIG_ENCRYPTION_KEY": ENCRYPTION_KEY, "STATUS_PAGE_SIZE": "100",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8080", "PYTHONUNBUFFERED": "1",
        # The fake vendors listen on loopback, which a client's baseUrl may not reach by default.
        "VENDOR_ALLOW_PRIVATE_ADDRESSES": "true",
        # As the manifest does: gunicorn workers keep their metrics in files, one directory per instance.
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="metrics-", dir=LOG_DIR),
    })
    env.update(settings)
    return env


def start_gunicorn(name: str, wsgi_target: str, env: dict[str, str],
                   workers: int = GUNICORN_WORKERS) -> tuple[Process, int]:
    """Run a WSGI app under gunicorn with sync workers and no access log; return it and its port."""
    port = free_port()
    # No -k: it would override gunicorn.conf.py's sync worker that answers gunicorn's own rejections as JSON.
    command = [str(BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}",
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
               "--timeout", "10s", "-s", str(WRK_DIR / script), url]
    if script_args:
        command += ["--", *script_args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            raw = json.loads(line[len("WRK_JSON "):])
            return WrkRun(requests=raw["requests"], non_2xx=raw["non_2xx"],
                          socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                          seconds=raw["duration_us"] / 1e6, p50_ms=raw["p50_us"] / 1000,
                          p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000)
    raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")


# Whose CPU a benchmark spends, by a fragment of each process's command line.
CPU_ROLES = (("PostgreSQL", "postgres"), ("service (gunicorn)", "gunicorn"))
LOAD_GENERATOR_ROLE = "load generator (wrk)"


def _cpu_seconds_by_pid() -> dict[int, tuple[str, float]]:
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        role = next((name for name, fragment in CPU_ROLES if fragment in command), None)
        if role is not None:
            found[int(entry.name)] = (role, (int(fields[11]) + int(fields[12])) / ticks)
    return found


def measure_cpu(drive: Callable[[], WrkRun]) -> tuple[WrkRun, dict[str, float]]:
    """Run one load and return its summary with the CPU ms each role spent per request."""
    before, children_before = _cpu_seconds_by_pid(), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = drive()
    after, children_after = _cpu_seconds_by_pid(), resource.getrusage(resource.RUSAGE_CHILDREN)
    spent: Counter[str] = Counter()
    for pid, (role, seconds) in after.items():
        spent[role] += seconds - before.get(pid, (role, 0.0))[1]
    # wrk has exited by now: its CPU is in this process's children's usage.
    spent[LOAD_GENERATOR_ROLE] = (children_after.ru_utime + children_after.ru_stime
                                  - children_before.ru_utime - children_before.ru_stime)
    requests = max(run.requests, 1)
    return run, {role: round(seconds * 1000 / requests, 3) for role, seconds in spent.items()}


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
    value: float | None  # None: could not be measured (e.g. the page was never reached)
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
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):  # NaN, or a ratio with nothing to divide
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    # Three decimals below 1, so a ratio of 0.395 never reads as a target of 0.40 met.
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


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


# ---------------------------------------------------------------- Emarsys partner API


class EmarsysIdentity:
    """An RSA key that signs Emarsys bearer tokens, its JWKS, and the service settings that trust it."""

    ISSUER = "https://ias.bench.test"
    CLIENT_ID = "emarsys-sms-bench"
    KID = "bench-key-1"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        """Return the JWKS holding the public half of the signing key."""
        from jwt.algorithms import RSAAlgorithm

        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.KID, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def settings(self, fakes_url: str) -> dict[str, str]:
        """Return the service settings that accept this identity's tokens."""
        return {"EMARSYS_JWKS_URL": f"{fakes_url}/jwks", "EMARSYS_TOKEN_ISSUER": self.ISSUER,
                "EMARSYS_OAUTH_CLIENT_ID": self.CLIENT_ID}

    def headers(self) -> dict[str, str]:
        """Return request headers with a fresh, valid bearer token."""
        import jwt

        now = int(time.time())
        claims = {"iss": self.ISSUER, "azp": self.CLIENT_ID, "sub": self.CLIENT_ID, "iat": now, "exp": now + 3600}
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.KID})
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def onboard_genesys_client(port: int, identity: EmarsysIdentity, fakes_url: str) -> str:
    """Configure one Genesys client through PUT /clients/{id}/configuration; return its id."""
    import uuid

    client_id = str(uuid.uuid4())
    fields = {"vendor": "genesys", "login": "bench-login", "password": "bench-password",
              "sender": "BENCH", "baseUrl": f"{fakes_url}/genesys/send"}
    answer = http_request(port, "PUT", f"/clients/{client_id}/configuration",
                          json.dumps({"customFieldValues": fields}).encode(), identity.headers())
    if answer.status != 200:
        raise RuntimeError(f"onboarding answered {answer.status}: {answer.body[:300]!r}")
    return client_id


def message_batch(prefix: str, count: int = 1000) -> bytes:
    """Return a valid POST /clients/{id}/messages body of `count` messages with fresh ids."""
    messages = [{"emarsysMessageId": f"{prefix}-{n}", "source": "BENCH",
                 "destination": f"+49151{n:08d}", "message": f"Campaign message {n}: 20% off today only"}
                for n in range(count)]
    return json.dumps({"messages": messages}).encode()


def run_module_bounded(module: str, limit: float, grace: float) -> tuple[str, str | None]:
    """Run `python -m module` under a hard time limit; return its output and why it failed, if it did."""
    process = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=limit)
        return output or "", None if process.returncode == 0 else last_lines(output)
    except subprocess.TimeoutExpired:
        return stop_overrunning(process, grace), f"overran its {limit:g} s limit and was stopped"


def stop_overrunning(process: subprocess.Popen, grace: float) -> str:
    """Stop a run with SIGTERM (it then stops what it started), killing it if it hangs past `grace`."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""


def without_log_lines(output: str | None) -> str:
    """Drop the app's JSON log lines, which would bury the printed tables."""
    return "\n".join(line for line in (output or "").splitlines() if not line.startswith('{"time"'))


def last_lines(output: str | None, count: int = 10) -> str:
    """Return the last non-empty lines of a run's output, for the reason it failed."""
    lines = [line for line in without_log_lines(output).splitlines() if line.strip()]
    return "\n".join(lines[-count:]) or "no output"
