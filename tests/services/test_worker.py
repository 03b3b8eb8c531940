"""The worker's identity: the lease owner every claim writes."""
from __future__ import annotations

import socket

import pytest

from models import OutboundMessage, OutboxItem
from services.worker import worker_identity


@pytest.mark.parametrize("hostname", ["web-1", "h" * 64, "a-very-long.fully.qualified.name." * 3])
def test_the_identity_fits_the_lease_owner_columns_and_stays_unique(monkeypatch, hostname):
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)

    identities = {worker_identity() for _ in range(50)}

    widths = {OutboxItem.__table__.c.lease_owner.type.length, OutboundMessage.__table__.c.lease_owner.type.length}
    assert len(identities) == 50
    assert all(len(identity) <= min(widths) for identity in identities)
    assert all(identity.startswith(hostname[:20]) for identity in identities)
