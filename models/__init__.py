"""The database handle and every table, in SQLAlchemy 2.0 style."""
from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, Integer, MetaData
from sqlalchemy.dialects import postgresql, sqlite
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

from models.events import RawEvent  # noqa: E402
from models.messages import Bounce, InboundMessageRecord, MessageState, StatusCursor  # noqa: E402
from models.partner import Client, OutboundMessage, OutboxItem  # noqa: E402

__all__ = ["db", "Base", "BigId", "dialect_insert", "RawEvent", "MessageState", "Bounce", "InboundMessageRecord",
           "Client", "OutboundMessage", "OutboxItem", "StatusCursor"]
