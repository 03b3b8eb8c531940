"""Shapes of the bodies the service answers (and of request bodies validated by hand), for /openapi.json.

The views build these bodies as plain dicts; these schemas describe them for the API
description and validate nothing on the request path.
"""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.outbound import MAX_BATCH_SIZE, OutboundMessageSchema


class ErrorSchema(Schema):
    """The JSON body of every error the service answers on purpose."""

    error = fields.String(required=True, metadata={"description": "Machine-readable error code"})
    message = fields.String(required=True)
    field = fields.String(metadata={"description": "The parameter or header at fault, when there is one"})
    fields_ = fields.Dict(data_key="fields", keys=fields.String(),
                          metadata={"description": "Every fault by field (query-parameter validation only)"})


class HealthSchema(Schema):
    """The answer of `GET /health`."""

    status = fields.String(required=True, validate=validate.OneOf(["up"]))


class ReadinessSchema(Schema):
    """The answer of `GET /ready`."""

    status = fields.String(required=True, validate=validate.OneOf(["ready", "unavailable"]))
    reason = fields.String(metadata={"description": "Why the database is not usable (503 only)"})


class IngestAnswerSchema(Schema):
    """The answer to a vendor push: stored once, or recognised as a redelivery."""

    stored = fields.Boolean(required=True)
    duplicate = fields.Boolean(required=True)


class BounceSchema(Schema):
    """One bounce as SAP Marketing Cloud's generic text message adapter reads it."""

    messageId = fields.String(required=True)
    recipient = fields.String(required=True)
    statusCode = fields.String(required=True)
    statusText = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["Permanent", "Temporary"]))
    timestamp = fields.String(required=True, validate=validate.Regexp(r"^[0-9]{14}$"),
                              metadata={"description": "Event time in UTC, yyyyMMddHHmmss"})


class StatusPageSchema(Schema):
    """One page of bounces for SAP Marketing Cloud's status pull."""

    page = fields.String(required=True, metadata={"description": "The page number, as a string"})
    lastPage = fields.Boolean(required=True)
    status = fields.List(fields.Nested(BounceSchema), required=True)


class ClearedSchema(Schema):
    """The answer of the test-only clear endpoint."""

    cleared = fields.Boolean(required=True)


class CallbackUrlSchema(Schema):
    """One URL a client configures at its vendor."""

    url = fields.Url(required=True)


class CallbackUrlsSchema(Schema):
    """The client-specific callback URLs for delivery reports and inbound messages."""

    deliveryReports = fields.Nested(CallbackUrlSchema, required=True)
    inboundMessages = fields.Nested(CallbackUrlSchema, required=True)


class ConfigurationSavedSchema(Schema):
    """The answer to storing a client configuration."""

    callbackUrls = fields.Nested(CallbackUrlsSchema, required=True)


class ClientConfigurationSchema(Schema):
    """A stored client configuration: its custom field values (secrets included) and callback URLs."""

    customFieldValues = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    callbackUrls = fields.Nested(CallbackUrlsSchema, required=True)


class ConnectionTestResultSchema(Schema):
    """The outcome of a vendor credential test."""

    state = fields.String(required=True, validate=validate.OneOf(["success", "error"]))
    description = fields.String(metadata={"description": "Why the test failed (state error only)"})
    errorType = fields.String(validate=validate.OneOf(["credential", "temporary", "integration"]))


class FieldErrorSchema(Schema):
    """One invalid custom field."""

    fieldName = fields.String(required=True)
    description = fields.String(required=True)
    errorType = fields.String(required=True)


class FieldErrorsSchema(Schema):
    """The answer to an invalid client configuration."""

    errors = fields.List(fields.Nested(FieldErrorSchema), required=True)


class BatchErrorSchema(Schema):
    """One fault of an outbound batch, of the whole payload or of one message."""

    emarsysMessageId = fields.String(metadata={"description": "The message at fault (message errors only)"})
    errorType = fields.String(required=True, validate=validate.OneOf(["emarsys", "client"]))
    isErrorTransient = fields.Boolean(required=True)
    errorContext = fields.Dict(keys=fields.String(), required=True)


class OutboundBatchErrorSchema(Schema):
    """The answer to a refused outbound batch: a payload fault, or one entry per bad message."""

    globalError = fields.Nested(BatchErrorSchema)
    messageSpecificErrors = fields.List(fields.Nested(BatchErrorSchema))


class OutboundBatchSchema(Schema):
    """A batch of campaign messages to send; validated by schemas.outbound.load_outbound_batch."""

    messages = fields.List(fields.Nested(OutboundMessageSchema), required=True,
                           validate=validate.Length(min=1, max=MAX_BATCH_SIZE))

