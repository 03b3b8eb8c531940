"""The Emarsys SMS Partner Service endpoints (partner-service.yaml), behind Emarsys bearer tokens."""
from __future__ import annotations

import uuid

from flask import Blueprint, current_app, jsonify, request

from errors import Forbidden, NotFound, Unauthorized, Unavailable
from routes import forbid_caching
from schemas.client_config import InvalidClientConfig, field_error, load_client_config
from schemas.outbound import load_outbound_batch_json, payload_error
from services import vendors
from services.clients import (callback_urls, client_config, delete_client, get_client,
                              parse_client_id, save_client)
from services.outbound import accept_batch

bp = Blueprint("partner", __name__)
CLIENT_ID_FIELD = "clientId"
NOT_A_UUID = "clientId must be a UUID (8-4-4-4-12 hexadecimal digits)"


# partner-service.yaml declares "403: Authentication failed." (and no 401) for these two.
AUTHENTICATION_FAILURE_IS_403 = frozenset({"partner.get_configuration", "partner.delete_configuration"})


@bp.before_request
def require_emarsys_token() -> None:
    """Refuse every partner request without a valid Emarsys bearer token."""
    verifier = current_app.extensions.get("emarsys_token_verifier")
    if verifier is None:
        # Without EMARSYS_OAUTH_CLIENT_ID any token would do; refuse to serve rather than guess.
        raise Unavailable("partner API not configured")
    try:
        verifier.verify(request.headers.get("Authorization"))
    except Unauthorized as refused:
        if request.endpoint not in AUTHENTICATION_FAILURE_IS_403:
            raise
        raise Forbidden(refused.message, headers=refused.headers) from None


# Kept out of every cache: configurations carry secrets and callback tokens.
bp.after_request(forbid_caching)


def configuration_client_id(raw: str) -> uuid.UUID:
    """Return the path's clientId, or raise the spec's InvalidFieldErrors."""
    client_id = parse_client_id(raw)
    if client_id is None:
        raise InvalidClientConfig([field_error(CLIENT_ID_FIELD, NOT_A_UUID, "invalid")])
    return client_id


def request_json() -> object:
    """Return the parsed JSON body whatever its content type, or None when it is not JSON."""
    return request.get_json(force=True, silent=True)


@bp.put("/clients/<client_id>/configuration")
def put_configuration(client_id: str):
    """Create or update a client's configuration and answer its callback URLs."""
    valid_id = configuration_client_id(client_id)
    client = save_client(valid_id, load_client_config(request_json()))
    return jsonify({"callbackUrls": callback_urls(client).to_dict()}), 200


def configured_client_id(raw: str) -> uuid.UUID:
    """Return the path's clientId, or raise NotFound: GET and DELETE declare no 400."""
    client_id = parse_client_id(raw)
    if client_id is None:
        raise NotFound(f"client {raw[:100]!r} is not configured ({NOT_A_UUID})", field=CLIENT_ID_FIELD)
    return client_id


@bp.get("/clients/<client_id>/configuration")
def get_configuration(client_id: str):
    """Answer a client's custom field values (secrets included) and callback URLs."""
    client = get_client(configured_client_id(client_id))
    return jsonify({"customFieldValues": client_config(client).fields,
                    "callbackUrls": callback_urls(client).to_dict()}), 200


@bp.delete("/clients/<client_id>/configuration")
def delete_configuration(client_id: str):
    """Delete a client and cancel its unsent messages."""
    delete_client(configured_client_id(client_id))
    return "", 204


@bp.post("/testConnection")
def check_connection():
    """Check the given credentials with a real vendor request."""
    config = load_client_config(request_json())
    result = vendors.test_connection(config, timeout=current_app.config["VENDOR_TIMEOUT_SECONDS"])
    return jsonify(result.to_dict()), 200


@bp.post("/clients/<client_id>/messages")
def post_messages(client_id: str):
    """Queue a batch of campaign messages for sending; nothing is queued unless all are valid."""
    valid_id = parse_client_id(client_id)
    if valid_id is None:
        raise payload_error(NOT_A_UUID, field=CLIENT_ID_FIELD)
    accept_batch(valid_id, load_outbound_batch_json(request.get_data()))
    return "", 202
