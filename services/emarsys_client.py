"""Post delivery-report and inbound-message batches to Emarsys and classify its answer."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import requests

from schemas.text import storable_text
from services.oauth import OAuthTokenProvider, TokenServiceError
from services.retry import parse_retry_after
from services.vendors.transport import (BearerToken, bind_to_deadlines, ignore_netrc, request_within,
                                       whole_call_seconds)

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 1000
DELIVERY_REPORTS = "deliveryReports"
INBOUND_MESSAGES = "inboundMessages"
# Emarsys error texts end up in dead letters; bound them so one answer cannot bloat a row.
MAX_ERROR_TEXT = 500

CallKind = Literal["delivered", "retry", "item_errors", "rejected"]


@dataclass(frozen=True)
class CallResult:
    """What the outbox should do with a batch after one call to Emarsys."""

    kind: CallKind
    retry_after: float | None = None
    # Index in the batch -> Emarsys's error text; only for kind "item_errors".
    item_errors: dict[int, str] = field(default_factory=dict)
    reason: str = ""
    http_status: int | None = None
    # No answer at all (a timeout, a network error, the token service down): about Emarsys, not the batch.
    unreachable: bool = False


def _item_path_pattern(collection: str) -> re.Pattern[str]:
    """Return a regex capturing the item index in dataPaths such as ".x[3]", "x[3].y" or "/x/3"."""
    name = re.escape(collection)
    return re.compile(
        rf"^#?[./]?(?:{name}|\[['\"]{name}['\"]\])"
        r"(?:\[(\d+)\]|/(\d+)|\.(\d+))"
        r"(?=$|[./\[])")


_ITEM_PATH_PATTERNS = {key: _item_path_pattern(key) for key in (DELIVERY_REPORTS, INBOUND_MESSAGES)}


def item_index(data_path: str, collection: str, batch_size: int) -> int | None:
    """Return the batch index a dataPath points into, or None when it names no item of the batch."""
    match = _ITEM_PATH_PATTERNS[collection].match(data_path.strip())
    if match is None:
        return None
    index = int(next(group for group in match.groups() if group is not None))
    return index if index < batch_size else None


def _error_text(error: dict[str, Any]) -> str:
    """Return a short human-readable line for one InvalidFormatError, storable in a dead letter."""
    path = error.get("dataPath") or error.get("instancePath") or ""
    message = str(error.get("message") or error.get("keyword") or "invalid")
    text = f"{path}: {message}" if path else message
    # Unstorable, the answer could not be recorded: the batch would stay leased and be posted again
    # after every lease, never becoming a dead letter.
    return storable_text(text)[:MAX_ERROR_TEXT]


def _format_errors(response: requests.Response) -> list[dict[str, Any]] | None:
    """Return the errors list of an InvalidFormatErrorBatch body, or None when there is none."""
    try:
        body = response.json()
    except ValueError:
        return None
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not all(isinstance(e, dict) for e in errors):
        return None
    return errors


def classify_invalid_format(response: requests.Response, collection: str,
                            batch_size: int) -> CallResult:
    """Turn a 400 answer into per-item errors, or reject the batch when no item is named."""
    errors = _format_errors(response)
    if errors is None:
        return CallResult("rejected", reason="HTTP 400 without an InvalidFormatErrorBatch body",
                          http_status=400)
    item_errors: dict[int, list[str]] = {}
    batch_errors: list[str] = []
    for error in errors:
        path = str(error.get("dataPath") or error.get("instancePath") or "")
        index = item_index(path, collection, batch_size)
        target = batch_errors if index is None else item_errors.setdefault(index, [])
        target.append(_error_text(error))
    if batch_errors:
        # Resending the other items would fail the same way: the fault is in the batch itself.
        return CallResult("rejected", reason="HTTP 400: " + "; ".join(batch_errors)[:MAX_ERROR_TEXT],
                          http_status=400)
    return CallResult("item_errors", reason=f"HTTP 400 naming {len(item_errors)} item(s)",
                      http_status=400,
                      item_errors={index: "; ".join(texts) for index, texts in item_errors.items()})


def _retry_after(response: requests.Response) -> float | None:
    """Return the wait a response's Retry-After header asks for, if any."""
    return parse_retry_after(response.headers.get("Retry-After"), datetime.now(timezone.utc))


def classify_response(response: requests.Response, collection: str, batch_size: int) -> CallResult:
    """Map an Emarsys answer (after any 401 refresh) to what the outbox should do."""
    status = response.status_code
    if 200 <= status < 300:
        return CallResult("delivered", reason=f"HTTP {status}", http_status=status)
    if status == 400:
        return classify_invalid_format(response, collection, batch_size)
    if status == 401:
        return CallResult("retry", reason="HTTP 401 even with a freshly fetched token",
                          http_status=status)
    if status == 403:
        return CallResult("rejected", reason="HTTP 403: partner is not authorised for this client",
                          http_status=status)
    if status == 404:
        return CallResult("rejected", reason="HTTP 404: client does not exist at Emarsys",
                          http_status=status)
    if status == 429:
        return CallResult("retry", reason="HTTP 429: rate limited", http_status=status,
                          retry_after=_retry_after(response))
    # 5xx, and anything unexpected, is retried: losing a report is worse than a late one.
    return CallResult("retry", reason=f"HTTP {status}", http_status=status,
                      retry_after=_retry_after(response))


def _loggable_reason(result: CallResult) -> str:
    """Return the reason of a result in a form safe to log."""
    # A 400's error texts may quote the rejected values, i.e. subscriber data; they go to
    # the dead-letter row only. Our own reasons never hold bodies or tokens.
    if result.http_status == 400:
        return f"HTTP 400, {len(result.item_errors) or 'no'} item(s) named"
    return result.reason


class EmarsysClient:
    """Send callback batches to the Emarsys SMS partner API."""

    def __init__(self, base_url: str, tokens: OAuthTokenProvider,
                 session: requests.Session | None = None,
                 timeout: float | tuple[float, float] = (5, 30)):
        self._base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._session = ignore_netrc(bind_to_deadlines(session or requests.Session()))
        self._timeout = timeout

    def send_delivery_reports(self, client_id: str, reports: list[dict]) -> CallResult:
        """Post up to 1000 DeliveryReport objects for one client."""
        return self._send(client_id, DELIVERY_REPORTS, reports)

    def send_inbound_messages(self, client_id: str, messages: list[dict]) -> CallResult:
        """Post up to 1000 InboundMessage objects for one client."""
        return self._send(client_id, INBOUND_MESSAGES, messages)

    def _send(self, client_id: str, collection: str, items: list[dict]) -> CallResult:
        """Post one batch and classify the outcome; never raises for network or server faults."""
        if not 1 <= len(items) <= MAX_BATCH_SIZE:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_SIZE} items, got {len(items)}")
        url = f"{self._base_url}/clients/{quote(client_id, safe='')}/{collection}"
        try:
            result = classify_response(self._post_with_refresh(url, {collection: items}),
                                       collection, len(items))
        except TokenServiceError as exc:
            # No http_status: it is the token endpoint's, and a 400 there is not Emarsys refusing items.
            result = CallResult("retry", reason=f"token service: {exc}", unreachable=True)
        except requests.Timeout as exc:
            result = CallResult("retry", reason=f"timeout: {type(exc).__name__}", unreachable=True)
        except requests.RequestException as exc:
            result = CallResult("retry", reason=f"network error: {type(exc).__name__}", unreachable=True)
        level = logging.INFO if result.kind == "delivered" else logging.WARNING
        log.log(level, "emarsys %s client=%s items=%d -> %s (%s)", collection, client_id,
                len(items), result.kind, _loggable_reason(result))
        return result

    def _post_with_refresh(self, url: str, body: dict[str, Any]) -> requests.Response:
        """Post the body; on a 401 fetch a new token once and post again."""
        response = self._post(url, body)
        if response.status_code == 401:
            # The cached token may have been revoked or expired early at the issuer.
            self._tokens.invalidate()
            response = self._post(url, body)
        return response

    def _post(self, url: str, body: dict[str, Any]) -> requests.Response:
        """Post the body once with the current bearer token."""
        # Redirects are not followed: they would resend the token to wherever they point.
        return request_within(self._session, whole_call_seconds(self._timeout), "POST", url, json=body,
                              auth=BearerToken(self._tokens.token()), headers={"Accept": "application/json"},
                              timeout=self._timeout, allow_redirects=False)
