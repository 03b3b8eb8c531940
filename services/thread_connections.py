"""One autocommit PostgreSQL connection per thread, for the vendor hot path.

A vendor receipt is one EXECUTE of a prepared statement in autocommit: one round trip and one
commit. Checking a connection out of SQLAlchemy's pool for it, wrapping it and resetting it on
the way back cost more Python time than the statement costs PostgreSQL (bench/profile_ingest.py),
so each thread keeps one connection of its own. It is taken from the engine's pool and detached,
so it has the engine's connect arguments (connect and statement timeouts) but is never shared,
returned or reset. A dropped connection is thrown away and the error re-raised as SQLAlchemy's,
so the caller answers 503 exactly as on every other path, and the next receipt reconnects.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError


SERIALIZATION_FAILURE = "40001"
# Each retry follows a commit of another statement on the same row: a few are plenty.
MAX_SERIALIZATION_RETRIES = 10


class ThreadConnections:
    """Per-thread autocommit DBAPI connections of one engine, each set up once with `setup_sql`."""

    def __init__(self, engine: Engine, setup_sql: str):
        self.engine = engine
        self.setup_sql = setup_sql
        self._local = threading.local()
        self._opened: list = []
        self._opened_lock = threading.Lock()
        # Detached connections are not the pool's: disposing the engine must close them too.
        event.listen(engine, "engine_disposed", self.close_all)

    def fetch_one(self, sql: str, parameters: Sequence[Any]) -> tuple:
        """Run one statement in autocommit on this thread's connection and return its first row.

        A serialization failure (under REPEATABLE READ, a row another transaction changed since
        the statement's snapshot) is retried afresh: the failed statement wrote nothing.
        """
        connection = self._connection()
        try:
            for attempt in range(1, MAX_SERIALIZATION_RETRIES + 1):
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(sql, parameters)
                        return cursor.fetchone()
                except self.engine.dialect.loaded_dbapi.Error as error:
                    retried = getattr(error, "pgcode", None) == SERIALIZATION_FAILURE
                    if not retried or attempt == MAX_SERIALIZATION_RETRIES:
                        raise
        except self.engine.dialect.loaded_dbapi.Error as error:
            raise self._translated(error, connection, sql, parameters) from error

    def close(self) -> None:
        """Close this thread's connection, if it has one."""
        connection, self._local.connection = getattr(self._local, "connection", None), None
        if connection is not None:
            self._forget(connection)

    def close_all(self, *_engine) -> None:
        """Close every thread's connection (when the engine is disposed)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            if not connection.closed:
                connection.close()

    def _forget(self, connection) -> None:
        with self._opened_lock:
            self._opened = [known for known in self._opened if known is not connection]
        if not connection.closed:
            connection.close()

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        # A forked process must not share its parent's socket.
        if connection is not None and not connection.closed and self._local.pid == os.getpid():
            return connection
        try:
            pooled = self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as error:
            # The pool raises the driver's own error; wrapped, PostgreSQL being down is a 503.
            raise DBAPIError.instance(None, None, error, self.engine.dialect.loaded_dbapi.Error,
                                      connection_invalidated=True, dialect=self.engine.dialect) from error
        pooled.detach()
        connection = pooled.dbapi_connection
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                # A pooled connection may carry statements another path prepared (and recorded in
                # the pool's bookkeeping, which no longer applies): start from none.
                cursor.execute("DEALLOCATE ALL")
                cursor.execute(self.setup_sql)
        except self.engine.dialect.loaded_dbapi.Error as error:
            connection.close()
            raise self._translated(error, connection, self.setup_sql, ()) from error
        with self._opened_lock:
            self._opened.append(connection)
        self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _translated(self, error: Exception, connection, sql: str, parameters: Sequence[Any]) -> DBAPIError:
        disconnected = self.engine.dialect.is_disconnect(error, connection, None)
        if disconnected:
            self.close()
        return DBAPIError.instance(sql, parameters, error, self.engine.dialect.loaded_dbapi.Error,
                                   hide_parameters=self.engine.hide_parameters,
                                   connection_invalidated=disconnected, dialect=self.engine.dialect)
