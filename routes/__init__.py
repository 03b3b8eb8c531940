"""One blueprint per audience: vendors, SAP Marketing Cloud, Emarsys, operators."""
from __future__ import annotations

from werkzeug.wrappers import Response


def forbid_caching(response: Response) -> Response:
    """Mark the answer `Cache-Control: no-store`, for answers that carry secrets, tokens or phone numbers."""
    response.headers["Cache-Control"] = "no-store"
    return response
