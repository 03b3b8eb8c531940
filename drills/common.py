"""Shared pieces of the fault drills: results, process handling, PostgreSQL outages, the load driver.

The stack itself (throwaway PostgreSQL, gunicorn, the Emarsys identity) comes from
bench/common.py; what only the drills need lives here and in drills/fakes.py.
"""
from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.common import REPO, BenchDatabase, Check, Process, machine, table
from tests.pg import ThrowawayPostgres

RESULTS_DIR = REPO / "drills" / "results"


# ---------------------------------------------------------------- results


@dataclass
class DrillResult:
    """The outcome of one drill: what was tried, the checks that must hold, and the figures."""

    name: str
    title: str
    tried: list[str]
    checks: list[Check]
    figures: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """Return whether every check held."""
        return bool(self.checks) and all(check.met for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document written to drills/results/<name>.json."""
        return {"name": self.name, "title": self.title, "held": self.held, "tried": self.tried,
                "checks": [vars(check) for check in self.checks], "figures": self.figures,
                "settings": self.settings, "notes": self.notes, "machine": machine()}


def check(name: str, value: Any, target: str, met: bool) -> Check:
    """Return one assertion of a drill, with the measured value beside its target."""
    return Check(name, value, target, bool(met))


def report(result: DrillResult) -> int:
    """Print what was tried, the checks and the figures; write the JSON; return the exit code."""
    print(f"\n{result.title}\n")
    for line in result.tried:
        print(f"tried: {line}")
    rows = [(c.name, c.value, c.target, "held" if c.met else "FAILED") for c in result.checks]
    print("\n" + table(rows, ("check", "measured", "must be", "")))
    print("\n" + table(list(result.figures.items()), ("figure", "value")))
    for note in result.notes:
        print(f"- {note}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{result.name}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    print(f"\n{'HELD' if result.held else 'FAILED'}: {result.name}; written: {path.relative_to(REPO)}")
    return 0 if result.held else 1


# ---------------------------------------------------------------- processes


def child_pids(parent_pid: int) -> list[int]:
    """Return the pids of the live direct children of a process (e.g. gunicorn's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces; the fields after it are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent_pid and fields[0] != "Z":
            children.append(int(entry.name))
    return sorted(children)


def open_sockets(pid: int) -> int:
    """Return how many sockets a process holds open (0 if it is gone)."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return 0
    return sum(link.startswith("socket:") for link in links)


def kill_one_worker(master_pid: int) -> int | None:
    """SIGKILL one worker of a gunicorn master (never the master), preferably one mid-request; return its pid.

    A sync worker serving a request holds one socket more (the client's) than an idle one.
    """
    workers = child_pids(master_pid)
    if not workers:
        return None
    victim = max(workers, key=open_sockets)
    os.kill(victim, signal.SIGKILL)
    return victim


def ensure_running(process: Process) -> None:
    """Fail with the end of its log when a process the drill needs has already exited."""
    if process.popen.poll() is not None:
        raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.tail(15)}")


def wait_for_workers(master_pid: int, count: int, timeout: float = 30.0) -> bool:
    """Wait until the master runs `count` workers again; return whether it did in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(child_pids(master_pid)) >= count:
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- PostgreSQL outages


class PostgresSwitch:
    """Stop and start a running throwaway cluster in place: same data, same port, same options."""

    def __init__(self, server: ThrowawayPostgres):
        self.server = server
        # The options it was started with, as postgres itself recorded them.
        recorded = shlex.split((server.data / "postmaster.opts").read_text())
        self.options = shlex.join(recorded[1:])

    def stop(self) -> None:
        """Stop the cluster the way an operator restarts it (fast: running statements are cancelled)."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        """Start the cluster again and wait until it accepts connections."""
        self._pg_ctl("-o", self.options, "-l", str(self.server.root / "log"), "-w", "start")

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.server.bin / "pg_ctl"), "-D", str(self.server.data), *args]
        if self.server.run_as:
            command = ["runuser", "-u", self.server.run_as, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def counts_per_id(database: BenchDatabase, sql: str, ids: Iterable[str]) -> Counter[str]:
    """Run a `... WHERE x = ANY(%s) GROUP BY x` count query for the ids; return count per id."""
    return Counter(dict(database.rows(sql, (list(ids),))))


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class Attempt:
    """One request of the load driver: when it started and ended (monotonic s) and its answer."""

    item: str
    started: float
    ended: float
    status: int | None  # None: no answer (connection refused, reset, timeout)

    @property
    def millis(self) -> float:
        """Return how long the request took, in milliseconds."""
        return (self.ended - self.started) * 1000


@dataclass(frozen=True)
class Request:
    """One HTTP request the load driver sends, again unchanged when it retries."""

    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def genesys_receipt(path: str, message_id: str, state: str = "2", result_code: str = "0") -> Request:
    """Return a Genesys delivery receipt (form POST) for one message."""
    form = {"type": "receipt", "message_id": message_id, "message_state": state, "result_code": result_code}
    return Request("POST", path, urlencode(form).encode(),
                   {"Content-Type": "application/x-www-form-urlencoded"})


class LoadDriver:
    """Drive requests for fresh ids from threads; retry unanswered ones (no answer or 5xx) unchanged.

    Every id's requests are identical, so a retry of a request that did commit is a redelivery
    the service must deduplicate. `stop()` ends new ids; the ids already started are retried
    until answered or until the grace period ends.
    """

    def __init__(self, port: int, make_request: Callable[[str], Request], prefix: str, threads: int = 8,
                 per_thread_rate: float | None = None, timeout: float = 30.0, retry_pause: float = 0.05):
        self.port, self.make_request, self.prefix = port, make_request, prefix
        self.threads, self.timeout, self.retry_pause = threads, timeout, retry_pause
        self.interval = 1 / per_thread_rate if per_thread_rate else 0.0
        self.attempts: list[Attempt] = []
        self.acknowledged: set[str] = set()
        self.retried: set[str] = set()
        self.unanswered: set[str] = set()
        self.rejected: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._grace_deadline = float("inf")
        self._pool = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> LoadDriver:
        """Start the threads."""
        for thread in self._pool:
            thread.start()
        return self

    def stop(self, grace: float = 30.0) -> None:
        """Stop issuing new ids and wait until every started id is answered or the grace ends."""
        self._grace_deadline = time.monotonic() + grace
        self._stopping.set()
        for thread in self._pool:
            thread.join(grace + self.timeout + 5)

    def _run(self, thread_number: int) -> None:
        sequence = 0
        while not self._stopping.is_set():
            sequence += 1
            item = f"{self.prefix}-{thread_number}-{sequence}"
            began = time.monotonic()
            self._deliver(item, self.make_request(item))
            if self.interval:
                time.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    def _deliver(self, item: str, request: Request) -> None:
        """Send one id's request until a 2xx or 4xx answers it, or the grace period ends."""
        while time.monotonic() < self._grace_deadline:
            status = self._send(item, request)
            if status is not None and status < 500:
                with self._lock:
                    self.unanswered.discard(item)
                    if status < 300:
                        self.acknowledged.add(item)
                    else:
                        self.rejected[item] = status
                return
            with self._lock:
                self.retried.add(item)
                self.unanswered.add(item)
            time.sleep(self.retry_pause)

    def _send(self, item: str, request: Request) -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        started, status = time.monotonic(), None
        try:
            conn.request(request.method, request.path, body=request.body, headers=request.headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            conn.close()
        with self._lock:
            self.attempts.append(Attempt(item, started, time.monotonic(), status))
        return status

    def statuses(self) -> dict[str, int]:
        """Return how many requests got each answer ('none' for no answer)."""
        with self._lock:
            counted = Counter("none" if a.status is None else str(a.status) for a in self.attempts)
        return dict(sorted(counted.items()))

    def attempts_between(self, start: float, end: float) -> list[Attempt]:
        """Return the requests that started within [start, end] (monotonic seconds)."""
        with self._lock:
            return [a for a in self.attempts if start <= a.started <= end]
