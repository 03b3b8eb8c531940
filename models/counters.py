"""Counters the background worker keeps in the database, so that every web process can report them."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from models import db


class WorkerCounter(db.Model):
    """One monotonically growing count of a worker event, per metric name and label set."""

    __tablename__ = "worker_counters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    # Canonical JSON of the label values (sorted keys), e.g. {"kind":"delivery_report","result":"retry"}.
    labels: Mapped[str] = mapped_column(String(400), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]
