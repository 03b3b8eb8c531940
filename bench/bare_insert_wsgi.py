"""The bare-insert ceiling: one raw psycopg2 INSERT ... ON CONFLICT per request (bench only).

The ingest benchmark drives it with the same wrk script and gunicorn settings as the service,
so the service's full ingest path (raw event, state, bounce, outbox, metrics, logging) is
measured side by side with the cheapest durable write a Flask request can make.
"""
from __future__ import annotations

import os

import psycopg2
from flask import Flask, request
from sqlalchemy.engine import make_url

app = Flask(__name__)
_connection = None

CREATE_TABLE = ("CREATE TABLE IF NOT EXISTS bench_bare_inserts "
                "(id bigserial PRIMARY KEY, message_id text UNIQUE, params json, received_at timestamp)")
INSERT = ("INSERT INTO bench_bare_inserts (message_id, params, received_at) VALUES (%s, %s, now()) "
          "ON CONFLICT (message_id) DO NOTHING")


def connection():
    """Return this worker's autocommit connection, made on first use."""
    global _connection
    if _connection is None:
        url = make_url(os.environ["DATABASE_URL"])
        _connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
        _connection.autocommit = True
        with _connection.cursor() as cursor:
            cursor.execute(CREATE_TABLE)
    return _connection


@app.route("/vendors/genesys/delivery-reports", methods=["POST"])
@app.route("/api/v1/notifications/set", methods=["GET"])
def insert_receipt():
    """Insert the receipt's message id once and answer like the service does."""
    message_id = request.values.get("message_id") or request.values.get("orderID")
    with connection().cursor() as cursor:
        cursor.execute(INSERT, (message_id, "{}"))
    return {"stored": cursor.rowcount == 1, "duplicate": cursor.rowcount == 0}
