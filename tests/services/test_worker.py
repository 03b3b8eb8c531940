"""The worker: its identity (the lease owner every claim writes) and its job loops."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from models import OutboundMessage, OutboxItem
from services.worker import MAX_FAILURE_BACKOFF_SECONDS, JobDied, JobFailed, Worker, worker_identity

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("hostname", ["web-1", "h" * 64, "a-very-long.fully.qualified.name." * 3])
def test_the_identity_fits_the_lease_owner_columns_and_stays_unique(monkeypatch, hostname):
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)

    identities = {worker_identity() for _ in range(50)}

    widths = {OutboxItem.__table__.c.lease_owner.type.length, OutboundMessage.__table__.c.lease_owner.type.length}
    assert len(identities) == 50
    assert all(len(identity) <= min(widths) for identity in identities)
    assert all(identity.startswith(hostname[:20]) for identity in identities)


def test_a_job_that_hangs_does_not_hold_up_the_others(app):
    others_ran, hung_through, runs = threading.Event(), [], []

    def hanging() -> int:
        """Hang, like a forwarder on an Emarsys that never answers, until the other job ran 3 times."""
        hung_through.append(others_ran.wait(10))
        worker.stopping.set()
        return 0

    def counting() -> int:
        """Count the rounds, like a dispatcher with messages to send."""
        runs.append(1)
        if len(runs) == 3:
            others_ran.set()
        return 1

    worker = Worker(app, [hanging, counting])
    loop = threading.Thread(target=worker.run)
    loop.start()
    loop.join(15)
    assert hung_through == [True]
    assert not loop.is_alive()


def test_once_runs_each_job_one_time_in_order(app):
    ran = []
    Worker(app, [lambda: ran.append("a") or 1, lambda: ran.append("b") or 0]).run(once=True)
    assert ran == ["a", "b"]


class Escaped(BaseException):
    """Something _run_job does not catch, as a bug in setting up its app context would be."""


# The escaped exception is the point: threading reports it, pytest need not warn of it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_job_loop_that_dies_stops_the_worker_with_a_failure(app):
    def dying() -> int:
        """Raise past the job's own error handling."""
        raise Escaped()

    worker = Worker(app, [dying, lambda: 0], idle_seconds=0.01)
    outcome = []
    loop = threading.Thread(target=lambda: outcome.append(_run_catching(worker)))
    loop.start()
    loop.join(10)
    assert not loop.is_alive()
    assert isinstance(outcome[0], JobDied) and "dying" in str(outcome[0])
    assert worker.stopping.is_set()


def _run_catching(worker: Worker) -> BaseException | None:
    try:
        worker.run()
    except JobDied as exc:
        return exc
    return None


def test_the_dispatcher_and_forwarder_see_the_workers_stop_signal(app):
    worker = Worker.from_app(app)

    dispatcher, forwarder = (job.__self__ for job in worker.jobs[:2])

    assert dispatcher.stopping is worker.stopping and forwarder.stopping is worker.stopping


class NotedWaits(threading.Event):
    """The worker's stop event, noting each timed wait of a job's loop instead of sleeping through it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        """Note the timeout and return at once, as if it had passed."""
        if timeout is None:
            return super().wait()
        self.waits.append(timeout)
        return self.is_set()


def test_a_job_that_keeps_failing_backs_off_and_logs_one_traceback(app, caplog):
    # More failures than 2 ** failures fits a float for: the doubling must stay capped, not overflow.
    rounds = 1100
    stopping = NotedWaits()
    calls = []

    def failing() -> int:
        """Fail as a job does while the database is down; ask the worker to stop in the last round."""
        calls.append(1)
        if len(calls) == rounds:
            stopping.set()
        raise ConnectionError("database down")

    worker = Worker(app, [failing], idle_seconds=0.05, stopping=stopping)
    loop = threading.Thread(target=worker.run)
    loop.start()
    loop.join(30)

    assert not loop.is_alive() and worker.died == []
    assert len(calls) == rounds
    # Twice as long after each failure, from twice the idle time, up to MAX_FAILURE_BACKOFF_SECONDS.
    doubling = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6]
    assert stopping.waits == pytest.approx(doubling + [MAX_FAILURE_BACKOFF_SECONDS] * (rounds - len(doubling)))
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1 and "failed again: ConnectionError" in caplog.text


def test_a_job_that_works_again_starts_its_backoff_afresh(app, caplog):
    stopping = NotedWaits()
    rounds = []

    def flaky() -> int:
        """Fail twice, then find nothing to do, then fail once more and stop the worker."""
        rounds.append(1)
        if len(rounds) == 3:
            return 0
        if len(rounds) == 4:
            stopping.set()
        raise ConnectionError("database down")

    worker = Worker(app, [flaky], idle_seconds=0.05, stopping=stopping)
    loop = threading.Thread(target=worker.run)
    loop.start()
    loop.join(30)

    assert not loop.is_alive() and len(rounds) == 4
    # The idle wait after the round that worked, then the first step of the doubling again.
    assert stopping.waits == pytest.approx([0.1, 0.2, 0.05, 0.1])
    assert "works again after 2 failed round(s)" in caplog.text
    assert len([record for record in caplog.records if record.exc_info]) == 2  # a new fault: its traceback


def test_once_fails_when_a_job_fails(app):
    def failing() -> int:
        """Fail."""
        raise ConnectionError("database down")

    with pytest.raises(JobFailed, match="failing"):
        Worker(app, [failing, lambda: 0]).run(once=True)


BURST_OF_STOP_SIGNALS = """
import os, subprocess, sys
from flask import Flask
from services.worker import Worker

burst = []

def job() -> int:
    if not burst:  # the worker's handlers are installed by now
        burst.append(subprocess.Popen(["bash", "-c", "for k in $(seq 200); do kill -INT %d; kill -TERM %d; done"
                                       % (os.getpid(), os.getpid())]))
    return 0

Worker(Flask("burst"), [job], idle_seconds=0.01).run()
burst[0].wait()
print("stopped")
"""


def test_a_burst_of_stop_signals_stops_the_worker_instead_of_hanging_it():
    # Ctrl-C in `make run` is a SIGINT followed at once by the Makefile's SIGTERM: a handler that set
    # the stop event while the main thread held the event's lock waited for that lock for ever.
    worker = subprocess.Popen([sys.executable, "-c", BURST_OF_STOP_SIGNALS], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = worker.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        output, _ = worker.communicate()
        pytest.fail(f"the worker hung after the stop signals: {output[-500:]}")
    assert (worker.returncode, output.strip().splitlines()[-1]) == (0, "stopped")
