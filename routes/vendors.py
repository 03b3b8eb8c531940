"""Open endpoints where SMS vendors push delivery receipts and inbound messages."""
from __future__ import annotations

import io
import json
import uuid
from typing import IO
from urllib.parse import parse_qsl

from flask import Blueprint, current_app, g, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import File

from errors import Forbidden, InvalidParameter, NotFound, UnsupportedMediaType
from mappers import genesys, sapdi
from mappers.params import TEXT_PARAMETERS, decode_form, decode_parts
from mappers.registry import VendorAdapter
from models import Client
from services.clients import callback_signing_keys, client_for_callback
from services.clock import utcnow
from services.ingest import record_delivery_report, record_inbound_message
from services.metrics import observe_vendor_request, untracked_by_exporter
from services.twilio_signature import SIGNATURE_HEADER, is_valid_signature

bp = Blueprint("vendors", __name__)
bp.after_request(observe_vendor_request)
VENDOR_METHODS = ["GET", "POST"]
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
# What a signed (Twilio) body may declare: what Twilio sends, read by request_params as Twilio signs it.
SIGNED_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}


def request_params(adapter: VendorAdapter | None = None) -> dict[str, str]:
    """Return the query string and form fields as one flat dict (first value wins, form over query).

    The adapter's text parameters are the ones a 16-bit charset (UCS-2) applies to.
    """
    params = decode_form(request.query_string)
    mimetype = request.mimetype
    if mimetype in (URLENCODED, MULTIPART):
        config = current_app.config
        # A larger body gets a 413 before it is read.
        request.max_content_length = min(config["MAX_VENDOR_REQUEST_BYTES"], config["MAX_CONTENT_LENGTH"])
    if mimetype == URLENCODED:
        # Decoded here, not by request.form: werkzeug drops a body that is not UTF-8, and its
        # parser costs about 10 µs more per receipt, more than the receipt's mapping.
        params = _body_over_query(params, decode_form(
            request.get_data(), request.mimetype_params.get("charset"),
            adapter.body_parameters if adapter else TEXT_PARAMETERS))
    elif mimetype == MULTIPART:
        params = _body_over_query(params, _multipart_fields())
    elif not params and (request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "")):
        # Nothing to read but a body in another format (JSON, XML): say so, not "X is required".
        body = f"a body of type {mimetype}" if mimetype else "a body without a Content-Type"
        raise UnsupportedMediaType(f"{body} is not read: send the parameters in the query string "
                                   f"or as {URLENCODED} or {MULTIPART}", field="Content-Type")
    for key, value in params.items():
        if "\x00" in key or "\x00" in value:
            # PostgreSQL text cannot hold NUL: refuse it here rather than fail while storing.
            raise InvalidParameter("must not contain NUL characters",
                                   field=key.replace("\x00", "") or "(parameter name)")
    return params


class _BytePartParser(MultiPartParser):
    """Read each field as Latin-1, which keeps its bytes, noting each part's kind and declared charset.

    werkzeug decodes a part as UTF-8 unless it declares one of four charsets, and replaces
    what does not decode: decode_parts reads the bytes as a URL-encoded body's are read. A part
    with a filename is a file to werkzeug, but to a vendor just another way to send a value.
    """

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.kinds: list[tuple[bool, str | None]] = []  # (is a file, charset), in the body's order

    def get_part_charset(self, headers: Headers) -> str:
        """Note a field's declared charset and have werkzeug decode it as Latin-1."""
        self.kinds.append((False, _declared_charset(headers)))
        return "latin-1"

    def start_file_streaming(self, event: File, total_content_length: int | None) -> IO[bytes]:
        """Note a file part's declared charset, then let werkzeug store its bytes."""
        self.kinds.append((True, _declared_charset(event.headers)))
        return super().start_file_streaming(event, total_content_length)

    def parts_in_body_order(self, fields: list, files: list) -> list[tuple[str, bytes, str | None]]:
        """Return (name, bytes, declared charset) of every field and file part, in the body's order."""
        fields_left, files_left = iter(fields), iter(files)
        parts = []
        for is_file, charset in self.kinds:
            if is_file:
                name, upload = next(files_left)
                raw = upload.stream.read()
            else:
                name, text = next(fields_left)
                raw = text.encode("latin-1")
            if name is None:  # RFC 7578: every part has one; nothing could be read from it
                raise InvalidParameter("every multipart part needs a name (Content-Disposition: form-data; "
                                       'name="...")', field="body")
            parts.append((name, raw, charset))
        return parts


def _declared_charset(headers: Headers) -> str | None:
    return parse_options_header(headers.get("content-type"))[1].get("charset")


def _multipart_fields() -> dict[str, str]:
    body = request.get_data()  # within max_content_length; request.form can still read it (Twilio)
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary:
        return {}  # as with request.form, a malformed body has no fields: the mapper names one missing
    # Lists keep the parts in order, as the kinds are: a MultiDict groups them by name.
    parser = _BytePartParser(max_form_memory_size=request.max_form_memory_size,
                             max_form_parts=request.max_form_parts, cls=list)
    try:
        parts = parser.parts_in_body_order(*parser.parse(io.BytesIO(body), boundary.encode("ascii"), len(body)))
    except UnicodeDecodeError:
        # werkzeug reads part headers as UTF-8 only: every field would be lost, and the fault blamed on one.
        raise InvalidParameter("a multipart part's headers (its name, a filename) must be UTF-8",
                               field="body") from None
    except (ValueError, StopIteration):
        return {}  # malformed too (a bad boundary, a part without Content-Disposition, a cut body)
    except RequestEntityTooLarge:
        if request.max_form_memory_size is not None and len(body) > request.max_form_memory_size:
            raise  # only a body past max_form_memory_size trips that limit: the 413 is right
        # So the part count tripped: werkzeug's 413 would blame a size the body is within.
        raise InvalidParameter(f"a multipart body may have at most {request.max_form_parts} parts",
                               field="body") from None
    return decode_parts(parts)


def _body_over_query(query: dict[str, str], body: dict[str, str]) -> dict[str, str]:
    # Mappers match names in any letter case, so a query name the body repeats in another case
    # must go too, or it would win there as the first of its name.
    if query and body:
        repeated = {key.lower() for key in body}
        query = {key: value for key, value in query.items() if key.lower() not in repeated}
    return {**query, **body}


def vendor_adapter(vendor: str) -> VendorAdapter:
    """Return the adapter of a known vendor, or raise NotFound."""
    adapter = current_app.extensions["vendor_registry"].get(vendor)
    if adapter is None:
        raise NotFound(f"unknown vendor {vendor!r}", field="vendor")
    g.vendor = adapter.name  # for the request's log lines
    return adapter


def check_twilio_signature(auth_tokens: list[str]) -> None:
    """Refuse a Twilio request whose X-Twilio-Signature matches none of the auth tokens (so any, if none)."""
    signature = request.headers.get(SIGNATURE_HEADER)
    url, pairs = public_url(), _signed_body_pairs()
    if not any(is_valid_signature(token, url, pairs, signature) for token in auth_tokens):
        raise Forbidden(f"invalid or missing {SIGNATURE_HEADER}", field=SIGNATURE_HEADER)


def check_open_twilio_signature() -> None:
    """Refuse a Twilio request to an open URL with a signature not made with TWILIO_AUTH_TOKEN, if set."""
    if current_app.config["TWILIO_AUTH_TOKEN"]:
        check_twilio_signature([current_app.config["TWILIO_AUTH_TOKEN"]])


def _signed_body_pairs() -> list[tuple[str, str]]:
    """Return every (name, value) of the body, as Twilio signs them and as request_params reads them.

    Twilio signs UTF-8 URL-encoded parameters. A signed request's body must be just that, whatever
    the method: a body read in another charset, or as multipart, would give a genuine signature's
    values another meaning (an unsigned header would choose it), so it is refused.
    """
    body = request.get_data()
    if request.mimetype not in (URLENCODED, MULTIPART) or not body:
        return []  # nothing read from it
    charset = (request.mimetype_params.get("charset") or "utf-8").lower()
    if request.mimetype == URLENCODED and charset in SIGNED_CHARSETS:
        try:
            return parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeError:
            pass
    raise InvalidParameter(f"a signed request carries its body as {URLENCODED} in UTF-8, percent-encoded",
                           field="Content-Type")


def public_url() -> str:
    """Return the URL the vendor called, as seen from outside (behind the platform router), as signed."""
    query = request.query_string
    if not query.isascii():
        # Twilio percent-encodes its URLs; raw bytes cannot be the URL it signed.
        raise InvalidParameter("must be ASCII, percent-encoded", field="query string")
    # The query exactly as sent: a trailing "?" is part of what was signed, or of what was not.
    return current_app.config["PUBLIC_BASE_URL"] + request.path + ("?" + query.decode("ascii") if query else "")


def store_report(adapter: VendorAdapter, params: dict[str, str], client_id: uuid.UUID | None = None):
    """Map and store one delivery report, logging a status value no table knows.

    Genesys may post receipts and MOs to one URL, so a Genesys MO arriving here is stored as inbound.
    """
    if adapter.name == genesys.VENDOR and genesys.is_inbound(params):
        return store_inbound(adapter, params, client_id)
    report = adapter.map_report(params, utcnow())
    if not adapter.is_recognised(params):
        current_app.logger.warning("unrecognised status from %s: code=%r text=%r; stored as %s",
                                   adapter.name, report.status_code, report.status_text[:200],
                                   report.outcome.value)
    result = record_delivery_report(adapter.name, report, params, client_id)
    return stored_answer(result.duplicate)


def store_inbound(adapter: VendorAdapter, params: dict[str, str], client_id: uuid.UUID | None = None):
    """Map and store one inbound message once.

    Genesys posts receipts and MOs to the one URL an account has, so a Genesys receipt arriving
    here is stored as a receipt.
    """
    if adapter.name == genesys.VENDOR and genesys.is_receipt(params):
        return store_report(adapter, params, client_id)
    message = adapter.map_inbound(params, utcnow())
    result = record_inbound_message(adapter.name, message, params, client_id)
    return stored_answer(result.duplicate)


# The two answers a vendor can get, encoded once: thousands of receipts a second need no
# JSON encoder each.
STORED_ANSWERS = {duplicate: json.dumps({"stored": not duplicate, "duplicate": duplicate}) + "\n"
                  for duplicate in (False, True)}


def stored_answer(duplicate: bool):
    """Return the 200 a vendor gets once its request is committed."""
    return current_app.response_class(STORED_ANSWERS[duplicate], status=200, mimetype="application/json")


@bp.get("/api/v1/notifications/set")
@untracked_by_exporter
def sapdi_notification():
    """Store a SAP Digital Interconnect status notification (the blog's `set`)."""
    return store_report(vendor_adapter(sapdi.VENDOR), request_params())


@bp.route("/vendors/<vendor>/delivery-reports", methods=VENDOR_METHODS)
@untracked_by_exporter
def delivery_report(vendor: str):
    """Store a delivery report in the vendor's own format (query string or form)."""
    adapter = vendor_adapter(vendor)
    params = request_params(adapter)
    if vendor == "twilio":
        check_open_twilio_signature()
    return store_report(adapter, params)


@bp.route("/vendors/<vendor>/inbound-messages", methods=VENDOR_METHODS)
@untracked_by_exporter
def inbound_message(vendor: str):
    """Store a mobile-originated message in the vendor's own format."""
    adapter = vendor_adapter(vendor)
    params = request_params(adapter)
    if vendor == "twilio":
        check_open_twilio_signature()
    return store_inbound(adapter, params)


def client_callback(vendor: str, token: str) -> tuple[Client, VendorAdapter, dict[str, str]]:
    """Return the client of a callback URL, its vendor adapter and the request parameters.

    A Twilio request must carry a valid X-Twilio-Signature made with the client's own authToken
    (or, for a client moved since, the one of the Twilio account it moved away from).
    """
    adapter = vendor_adapter(vendor)  # an unknown vendor is refused before its name reaches a query
    client = client_for_callback(vendor, token)
    g.client_id = str(client.id)  # for the request's log lines
    params = request_params(adapter)
    if vendor == "twilio":
        check_twilio_signature(callback_signing_keys(client, vendor))
    return client, adapter, params


@bp.route("/vendors/<vendor>/clients/<token>/delivery-reports", methods=VENDOR_METHODS)
@untracked_by_exporter
def client_delivery_report(vendor: str, token: str):
    """Store a delivery report for the Emarsys client the callback URL belongs to."""
    client, adapter, params = client_callback(vendor, token)
    return store_report(adapter, params, client.id)


@bp.route("/vendors/<vendor>/clients/<token>/inbound-messages", methods=VENDOR_METHODS)
@untracked_by_exporter
def client_inbound_message(vendor: str, token: str):
    """Store a mobile-originated message for the Emarsys client the callback URL belongs to."""
    client, adapter, params = client_callback(vendor, token)
    return store_inbound(adapter, params, client.id)
