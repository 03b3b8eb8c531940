"""Fixtures shared by the service tests."""
from __future__ import annotations

import pytest

from services import vendors


@pytest.fixture
def fresh_sessions():
    """Start and end a test without pooled connections to an earlier test's server."""
    vendors.close_sessions()
    yield
    vendors.close_sessions()
