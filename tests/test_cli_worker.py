"""`flask worker` refuses unsafe settings with one line, not a traceback."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("settings, named", [
    (dict(LEASE_SECONDS=10, VENDOR_TIMEOUT_SECONDS=10), "LEASE_SECONDS"),
    (dict(DISPATCH_CONCURRENCY=0), "DISPATCH_CONCURRENCY"),
    (dict(RETENTION_DAYS=0), "RETENTION_DAYS"),  # it would purge what arrived a minute ago
    (dict(PURGE_MAX_BATCHES=0), "PURGE_MAX_BATCHES"),  # it would never purge
    (dict(PURGE_BATCH_SIZE=-1), "PURGE_BATCH_SIZE"),
    (dict(FORWARD_BATCH_SIZE=5000), "FORWARD_BATCH_SIZE"),  # more than Emarsys takes in one call
    (dict(FORWARD_MAX_AGE="0s"), "FORWARD_MAX_AGE"),  # every report dead at its first failure
    (dict(FORWARD_RETRY_SCHEDULE="5s,zero"), "FORWARD_RETRY_SCHEDULE"),
])
def test_the_worker_refuses_unsafe_settings_in_one_line(make_app, settings, named):
    app = make_app(**settings)
    with app.app_context():  # as `flask` itself runs every command
        result = app.test_cli_runner().invoke(args=["worker", "--once"])

    assert result.exit_code == 1
    assert result.output.startswith("Error: worker settings: ") and named in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
