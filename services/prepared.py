"""Prepared statements and driver autocommit: the pieces of the one-round-trip paths on PostgreSQL.

A hot path (a vendor receipt, an SAP page) is one prepared statement run in autocommit: one
round trip and one commit, and PostgreSQL parses and plans the statement once per connection.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection


def prepare_once(connection: Connection, name: str, prepare_sql: str) -> None:
    """Run `prepare_sql` (a PREPARE of statement `name`) unless this very connection already did."""
    pool_info, dbapi_connection = connection.connection.info, connection.connection.dbapi_connection
    # Remember the very DBAPI connection: a reconnect after a PostgreSQL restart must prepare again.
    if pool_info.get(name) is not dbapi_connection:
        connection.exec_driver_sql(prepare_sql)
        pool_info[name] = dbapi_connection


@contextmanager
def driver_autocommit(connection: Connection) -> Iterator[None]:
    """Run the block with the driver in autocommit: one statement is one round trip and one commit.

    SQLAlchemy's isolation_level="AUTOCOMMIT" option would do the same, but its reset on the
    way back to the pool is unguarded: when PostgreSQL drops the connection right after the
    commit (a restart), the reset raises, a stored receipt is answered 500 and the pool loses
    that connection slot for good (found by drills/postgres_restart.py).
    """
    dbapi_connection = connection.connection.dbapi_connection
    dbapi_connection.autocommit = True
    try:
        yield
    finally:
        try:
            dbapi_connection.autocommit = False
        except connection.dialect.loaded_dbapi.Error:
            connection.invalidate()
