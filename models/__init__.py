"""The database handle and every table, in SQLAlchemy 2.0 style."""
from __future__ import annotations

import re
import sqlite3

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, Engine, Integer, MetaData, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names keep Alembic migrations portable between SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL; SQLite only auto-increments an INTEGER primary key.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    """Declarative base for every table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


def dialect_insert(table):
    """Return an INSERT for the bound database (PostgreSQL or SQLite) that supports ON CONFLICT."""
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# Python's sqlite3 opens a transaction by itself only before a statement that starts with INSERT,
# UPDATE, DELETE or REPLACE: `WITH v AS (VALUES ...) UPDATE ...` would commit on its own, and the
# statements after it run in a second transaction. Not SQLAlchemy's pysqlite recipe (BEGIN on
# every transaction): it makes a transaction that reads before it writes fail at once with
# "database is locked" while another connection writes (SQLite cannot wait for that upgrade),
# where the driver's own rule, beginning at the first write, waits out the busy timeout.
_CTE_WRITE = re.compile(r"\s*WITH\b.*\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE | re.DOTALL)


def begin_before_cte_write(cursor, statement, *_args) -> None:
    """Open the driver's transaction before a CTE-prefixed write, as it does before a plain one."""
    connection = cursor.connection
    # isolation_level None is the driver's autocommit mode (SQLAlchemy's AUTOCOMMIT): leave it.
    if connection.isolation_level is not None and not connection.in_transaction and _CTE_WRITE.match(statement):
        connection.execute("BEGIN")


# On the dialect class, so only SQLite engines run it (PostgreSQL statements pay nothing).
event.listen(SQLiteDialect_pysqlite, "do_execute", begin_before_cte_write)
event.listen(SQLiteDialect_pysqlite, "do_execute_no_params", begin_before_cte_write)
event.listen(SQLiteDialect_pysqlite, "do_executemany", begin_before_cte_write)


def write_ahead_log(dbapi_connection, _record) -> None:
    """Put a SQLite database file in WAL mode, so that reads and the one writer do not block each other."""
    # In SQLite's default rollback journal a long read (an SAP page, a metrics scrape) holds a
    # vendor's or the worker's commit for its whole length, up to the busy timeout and a 503.
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


event.listen(Engine, "connect", write_ahead_log)

from models.events import RawEvent  # noqa: E402
from models.messages import Bounce, InboundMessageRecord, MessageState, StatusCursor  # noqa: E402
from models.partner import Client, OutboundMessage, OutboxItem  # noqa: E402

__all__ = ["db", "Base", "BigId", "dialect_insert", "RawEvent", "MessageState", "Bounce", "InboundMessageRecord",
           "Client", "OutboundMessage", "OutboxItem", "StatusCursor"]
