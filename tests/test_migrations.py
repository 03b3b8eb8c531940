"""The migrations build exactly the schema the models declare, on PostgreSQL and on SQLite."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from models import db


@pytest.mark.parametrize("app_fixture", ["app", "sqlite_app"])
def test_migrated_schema_matches_the_models(request, app_fixture):
    migrated_app = request.getfixturevalue(app_fixture)
    with migrated_app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    # A model changed without a migration (or the reverse) shows here as the DDL it would need.
    assert differences == []
