"""Index builds for migrations that leave the table writable: CREATE INDEX CONCURRENTLY on PostgreSQL.

A plain CREATE INDEX holds off every insert into its table while it builds (about a second per
million rows), so vendors' receipts would wait or fail through a deploy. CONCURRENTLY runs outside
a transaction, so each build commits on its own; a build cut short (its lock timeout, a killed
deploy) leaves an invalid index behind, which the retry drops before building again.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

# How long a concurrent build waits for older transactions. Its waits hold off no writes, unlike a
# plain DDL's (MIGRATION_LOCK_TIMEOUT_MS), but it waits for every snapshot in the database, a
# report's or a dump's on another table too; much longer, the platform's start timeout ends it.
CONCURRENT_WAIT_MS = 60000


def create_index_online(name: str, table: str, columns: list[str], where: str) -> None:
    """Create a partial index without blocking the table's writes (plainly on SQLite)."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(name, table, columns, unique=False, sqlite_where=sa.text(where))
        return
    with _concurrently():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        op.create_index(name, table, columns, unique=False, postgresql_where=sa.text(where),
                        postgresql_concurrently=True)


def drop_index_online(name: str, table: str) -> None:
    """Drop an index if it exists, without blocking the table's writes (plainly on SQLite)."""
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(name, table_name=table, if_exists=True)
        return
    with _concurrently():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


@contextmanager
def _concurrently() -> Iterator[None]:
    """Run the block outside a transaction, waiting up to CONCURRENT_WAIT_MS for older ones."""
    with op.get_context().autocommit_block():
        if op.get_context().as_sql:  # offline SQL (`flask db upgrade --sql`): its reader sets timeouts
            yield
            return
        bind = op.get_bind()
        lock_timeout = bind.exec_driver_sql("SHOW lock_timeout").scalar()
        bind.exec_driver_sql(f"SET lock_timeout = {CONCURRENT_WAIT_MS}")
        try:
            yield
        finally:
            bind.exec_driver_sql("SELECT set_config('lock_timeout', %(value)s, false)", {"value": lock_timeout})


def rename_index(old: str, new: str) -> None:
    """Rename a PostgreSQL index; its lock (SHARE UPDATE EXCLUSIVE) leaves the table writable."""
    op.execute(f'ALTER INDEX "{old}" RENAME TO "{new}"')
