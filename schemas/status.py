"""Query parameters of SAP Marketing Cloud's status pull."""
from __future__ import annotations

import re

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from models import StatusCursor
from schemas.text import no_nul_characters
from services.bounces import SAP_TIME_FORMAT

# A served page remembers where page + 1 starts, in an integer column: the largest page leaves room for it.
MAX_PAGE = 2**31 - 2
NOT_A_PAGE = "must be a non-negative integer"
# A page remembers where the next one starts under its sourceSystem: a longer name cannot be stored.
MAX_SOURCE_SYSTEM = StatusCursor.__table__.c.source_system.type.length


class SapTimestamp(fields.DateTime):
    """A `yyyyMMddHHmmss` UTC timestamp."""

    def __init__(self, **kwargs):
        super().__init__(format=SAP_TIME_FORMAT, **kwargs)
        self.error_messages["invalid"] = "must be a UTC timestamp in the form yyyyMMddHHmmss"

    def _deserialize(self, value, attr, data, **kwargs):
        # strptime alone would accept 13 digits (one-digit seconds).
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{14}", value):
            raise self.make_error("invalid", input=value, obj_type="datetime")
        return super()._deserialize(value, attr, data, **kwargs)


class StatusQuerySchema(Schema):
    """`startTimeUTC`, `endTimeUTC`, `page` and `sourceSystem` of a status pull."""

    startTimeUTC = SapTimestamp(load_default=None)
    endTimeUTC = SapTimestamp(load_default=None)
    # The bound keeps page * page size inside PostgreSQL's integer types (an OFFSET, a cursor's page).
    page = fields.Integer(load_default=0, strict=False, validate=[
        validate.Range(min=0, error=NOT_A_PAGE), validate.Range(max=MAX_PAGE, error="must be at most {max}")],
        error_messages={"invalid": NOT_A_PAGE})
    sourceSystem = fields.String(load_default=None, validate=[validate.Length(
        max=MAX_SOURCE_SYSTEM, error="must be at most {max} characters"), no_nul_characters])

    class Meta:
        unknown = "exclude"

    @pre_load
    def read_names_in_any_case(self, data, **kwargs):
        """Read `starttimeutc` as `startTimeUTC`, and so on; a name in its documented case wins."""
        # Dropped as unknown, a miscased name would silently widen the pull to the whole store and
        # mark all of it pulled.
        names = {name.lower(): name for name in self.fields}
        canonical = dict(data)
        for key, value in data.items():
            name = names.get(key.lower()) if isinstance(key, str) else None
            if name is not None:
                canonical.setdefault(name, value)
        return canonical

    @validates_schema
    def check_window(self, data, **kwargs):
        """Reject a window whose end lies before its start."""
        start, end = data.get("startTimeUTC"), data.get("endTimeUTC")
        if start and end and end < start:
            raise ValidationError("must not be before startTimeUTC", "endTimeUTC")
