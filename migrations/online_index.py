"""Index builds for migrations that leave the table writable: CREATE INDEX CONCURRENTLY on PostgreSQL.

A plain CREATE INDEX holds off every insert into its table while it builds (about a second per
million rows), so vendors' receipts would wait or fail through a deploy. CONCURRENTLY runs outside
a transaction, so each build commits on its own; a build cut short (its lock timeout, a killed
deploy) leaves an invalid index behind, which the retry drops before building again.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_index_online(name: str, table: str, columns: list[str], where: str) -> None:
    """Create a partial index without blocking the table's writes (plainly on SQLite)."""
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(name, table, columns, unique=False, sqlite_where=sa.text(where))
        return
    with op.get_context().autocommit_block():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        op.create_index(name, table, columns, unique=False, postgresql_where=sa.text(where),
                        postgresql_concurrently=True)


def drop_index_online(name: str, table: str) -> None:
    """Drop an index if it exists, without blocking the table's writes (plainly on SQLite)."""
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(name, table_name=table, if_exists=True)
        return
    with op.get_context().autocommit_block():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def rename_index(old: str, new: str) -> None:
    """Rename a PostgreSQL index; its lock (SHARE UPDATE EXCLUSIVE) leaves the table writable."""
    op.execute(f'ALTER INDEX "{old}" RENAME TO "{new}"')
