"""HTTP Basic authentication for the SAP pull and the operator pages."""
from __future__ import annotations

import functools
import hmac

from flask import current_app, request

from errors import Unauthorized, Unavailable

# The dashboard and /metrics take the same admin credentials: one realm, so a browser asks once.
OPERATOR_REALM = "operator"


def credentials_match(expected_user: str, expected_password: str) -> bool:
    """Tell whether the request carries these Basic credentials, in constant time."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), expected_user.encode())
    password_ok = hmac.compare_digest((auth.password or "").encode(), expected_password.encode())
    return user_ok and password_ok


def basic_auth_required(user_key: str, password_key: str, realm: str):
    """Guard a view with Basic credentials from config; without them, open only outside production."""

    def decorator(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            user = current_app.config.get(user_key)
            password = current_app.config.get(password_key)
            if not (user and password):
                if current_app.config.get("PRODUCTION"):
                    # Production never serves it open: the operator forgot the credentials.
                    raise Unavailable(f"{user_key} and {password_key} are not set", field=user_key)
            elif not credentials_match(user, password):
                raise credentials_required(realm)
            return view(*args, **kwargs)

        return guarded

    return decorator


def credentials_required(realm: str) -> Unauthorized:
    """Return the 401 that asks for Basic credentials of the realm."""
    return Unauthorized("valid Basic credentials are required", field="Authorization",
                        headers={"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'})
