"""Flask extensions, created unbound and initialised by the factory."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import Migrate

from errors import StartupError
from mappers.configurable import MappingFileError, load_mapping_file
from mappers.registry import VendorAdapter, build_registry
from services.crypto import SecretBox, encryption_keys
from services.partner_auth import EmarsysTokenVerifier, TokenPolicy

migrate = Migrate()


def load_vendor_registry(mapping_path: str | None) -> dict[str, VendorAdapter]:
    """Build the vendor adapters; a malformed mapping file stops start-up (StartupError)."""
    try:
        return build_registry(load_mapping_file(mapping_path) if mapping_path else None)
    except MappingFileError as error:
        # The manifest's first step is a flask command: there it is one line, not a traceback.
        raise StartupError(f"VENDOR_MAPPINGS_FILE {error}") from None


def secret_box_factory(app: Flask) -> Callable[[], SecretBox]:
    """Return a factory of the app's SecretBox; it fails (503) only when secrets are used."""
    keys = encryption_keys(app.config["CONFIG_ENCRYPTION_KEY"], Path(app.instance_path),
                           app.config["PRODUCTION"])
    return lambda: SecretBox(keys)


def token_verifier_from_config(config: Mapping[str, Any]) -> EmarsysTokenVerifier | None:
    """Build the app's one Emarsys token verifier, or None while EMARSYS_OAUTH_CLIENT_ID is unset."""
    if not config.get("EMARSYS_OAUTH_CLIENT_ID"):
        # No safe default exists: any default would accept tokens issued to someone else.
        return None
    policy = TokenPolicy(issuer=config["EMARSYS_TOKEN_ISSUER"], client_id=config["EMARSYS_OAUTH_CLIENT_ID"],
                         jwks_url=config["EMARSYS_JWKS_URL"])
    return EmarsysTokenVerifier(policy)
