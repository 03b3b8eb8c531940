"""Test helper: make two requests meet on one row lock, in a known order."""
from __future__ import annotations

import threading
import time

from sqlalchemy import text

from models import db


def lock_waiters() -> int:
    """Return how many sessions wait for a lock."""
    with db.engine.connect() as probe:
        return probe.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))


def post_in_thread(app, path: str, form: dict[str, str], answers: list[int]) -> threading.Thread:
    """Post from another web thread once the previous waiters queue on the lock; return the thread."""
    def post() -> None:
        """Post the form and note the answer."""
        answers.append(app.test_client().post(path, data=form).status_code)

    return start_waiting_for_a_lock(post)


def start_waiting_for_a_lock(target) -> threading.Thread:
    """Run `target` in a thread and return once it queues on a lock, behind the earlier waiters."""
    waiting = lock_waiters()
    thread = threading.Thread(target=target)
    thread.start()
    for _ in range(1000):  # the lock is granted in the order the waiters queued
        if lock_waiters() > waiting:
            return thread
        time.sleep(0.01)
    raise AssertionError("the thread never waited for a lock")
