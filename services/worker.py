"""The background worker: the dispatcher, the Emarsys forwarder and the retention purge, each in a loop of its own."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

from flask import Flask

log = logging.getLogger(__name__)


# lease_owner columns hold 64 characters; a Linux host name alone may have 64.
MAX_IDENTITY_LENGTH = 64


def worker_identity() -> str:
    """Return a name that is unique per worker process, used as the lease owner."""
    unique = f":{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return socket.gethostname()[:MAX_IDENTITY_LENGTH - len(unique)] + unique


# A job whose rounds keep failing (the database down, say) waits twice as long after each, up to this.
MAX_FAILURE_BACKOFF_SECONDS = 30.0
# How soon the main thread passes a noted SIGTERM/SIGINT on to the jobs.
STOP_SIGNAL_POLL_SECONDS = 0.1


class JobDied(RuntimeError):
    """A job's loop ended without the worker being asked to stop."""


class JobFailed(RuntimeError):
    """A job's one round (`run(once=True)`) failed."""


class Worker:
    """Run every background job in a loop of its own until asked to stop (SIGTERM/SIGINT).

    Each job has its own thread: a job that waits on its peer (an Emarsys that hangs until the
    timeout, for every client in turn) must not hold up the others, such as sending campaigns.
    """

    def __init__(self, app: Flask, jobs: list[Callable[[], int]], idle_seconds: float = 0.2,
                 stopping: threading.Event | None = None):
        self.app = app
        self.jobs = jobs
        self.idle_seconds = idle_seconds
        # Shared with the jobs, so that a long round ends early too (see Forwarder.run_once).
        self.stopping = stopping or threading.Event()
        self.died: list[str] = []
        self.stop_signal: int | None = None

    def install_stop_signals(self) -> None:
        """Make SIGTERM and SIGINT ask the worker to stop; call it from the main thread."""
        # The handler only notes the signal: it runs in the main thread between two bytecodes, maybe
        # while that thread holds the stop event's lock, and setting the event there would wait for
        # that lock for ever (a Ctrl-C followed by make run's SIGTERM hung the worker).
        def note(signum: int, _frame: object) -> None:
            self.stop_signal = signum

        signal.signal(signal.SIGTERM, note)
        signal.signal(signal.SIGINT, note)

    @classmethod
    def from_app(cls, app: Flask) -> "Worker":
        """Build the worker with the dispatcher, forwarder and retention purge configured from the app."""
        from services.dispatcher import Dispatcher
        from services.forwarder import Forwarder
        from services.retention import RetentionJob

        owner, stopping = worker_identity(), threading.Event()
        return cls(app, [Dispatcher.from_config(app.config, owner, stopping).run_once,
                         Forwarder.from_config(app.config, owner, stopping).run_once,
                         RetentionJob.from_config(app.config).run_once], stopping=stopping)

    def run(self, once: bool = False) -> None:
        """Run each job once, or loop each in its own thread until stopped; return when all have ended.

        Raises JobDied if a job's loop ended by itself: the other jobs are stopped too, so the
        process exits and the platform restarts it, rather than running on without that job.
        """
        if once:
            failed = [_name(job) for job in self.jobs if self._run_job(job) is None]
            if failed:
                raise JobFailed(f"worker job {', '.join(failed)} failed (see the log)")
            return
        if threading.current_thread() is threading.main_thread():
            self.install_stop_signals()
        loops = [threading.Thread(target=self._loop, args=(job,), name=f"worker-job-{index}")
                 for index, job in enumerate(self.jobs)]
        for loop in loops:
            loop.start()
        log.info("worker started: %s", ", ".join(_name(job) for job in self.jobs))
        # Each loop ends after its job's current round, which starts no new send or post once
        # stopping is set: those in flight are recorded first. The platform kills the process
        # soon after SIGTERM (Cloud Foundry: 10 s), and a post killed unrecorded is posted again.
        while not (self.stopping.is_set() or self.stop_signal):
            time.sleep(STOP_SIGNAL_POLL_SECONDS)
        self.stopping.set()
        for loop in loops:
            loop.join()
        if self.died:
            raise JobDied(f"worker job {', '.join(self.died)} ended unexpectedly; the worker stopped")

    def _loop(self, job: Callable[[], int]) -> None:
        failures = 0
        try:
            while not self.stopping.is_set():
                handled = self._run_job(job, first_failure=failures == 0)
                if handled is None:
                    failures += 1
                    # The exponent is capped: after hours down, 2 ** failures would overflow a float.
                    backoff = self.idle_seconds * 2 ** min(failures, 20)
                    self.stopping.wait(min(backoff, MAX_FAILURE_BACKOFF_SECONDS))
                    continue
                if failures:
                    log.warning("worker job %s works again after %d failed round(s)", _name(job), failures)
                failures = 0
                if not handled:
                    self.stopping.wait(self.idle_seconds)
        finally:
            if not self.stopping.is_set():  # not asked to stop: something escaped _run_job
                log.critical("worker job %s ended unexpectedly; stopping the worker", _name(job))
                self.died.append(_name(job))
                self.stopping.set()

    def _run_job(self, job: Callable[[], int], first_failure: bool = True) -> int | None:
        """Run one round of the job; return what it handled, or None if it failed (logged)."""
        with self.app.app_context():
            try:
                return job()
            except Exception as exc:  # A failing job must not kill its loop; it retries later.
                if first_failure:
                    log.exception("worker job %s failed", _name(job))
                else:  # the same fault again, most likely (the database down): one line, not a traceback
                    log.error("worker job %s failed again: %s", _name(job), type(exc).__name__)
                return None


def _name(job: Callable[[], int]) -> str:
    return getattr(job, "__qualname__", repr(job))
