"""The background worker: one loop that runs the dispatcher and the Emarsys forwarder."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
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


class Worker:
    """Run every background job in turn until asked to stop (SIGTERM/SIGINT)."""

    def __init__(self, app: Flask, jobs: list[Callable[[], int]], idle_seconds: float = 0.2):
        self.app = app
        self.jobs = jobs
        self.idle_seconds = idle_seconds
        self.stopping = threading.Event()

    @classmethod
    def from_app(cls, app: Flask) -> "Worker":
        """Build the worker with the dispatcher, forwarder and retention purge configured from the app."""
        from services.dispatcher import Dispatcher
        from services.forwarder import Forwarder
        from services.retention import RetentionJob

        owner = worker_identity()
        return cls(app, [Dispatcher.from_config(app.config, owner).run_once,
                         Forwarder.from_config(app.config, owner).run_once,
                         RetentionJob.from_config(app.config).run_once])

    def run(self, once: bool = False) -> None:
        """Loop over the jobs; sleep briefly when none had anything to do."""
        if not once and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
            signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        while not self.stopping.is_set():
            done = sum(self._run_job(job) for job in self.jobs)
            if once:
                return
            if not done:
                self.stopping.wait(self.idle_seconds)

    def _run_job(self, job: Callable[[], int]) -> int:
        with self.app.app_context():
            try:
                return job()
            except Exception:  # A failing job must not kill the loop; it retries next round.
                log.exception("worker job failed")
                return 0
