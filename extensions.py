"""Flask extensions, created unbound and initialised by the factory."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask_migrate import Migrate

from mappers.configurable import load_mapping_file
from mappers.registry import VendorAdapter, build_registry
from services.crypto import SecretBox, encryption_keys

migrate = Migrate()


def load_vendor_registry(mapping_path: str | None) -> dict[str, VendorAdapter]:
    """Build the vendor adapters; a malformed mapping file stops start-up (MappingFileError)."""
    return build_registry(load_mapping_file(mapping_path) if mapping_path else None)


def secret_box_factory(app: Flask) -> Callable[[], SecretBox]:
    """Return a factory of the app's SecretBox; it fails (503) only when secrets are used."""
    keys = encryption_keys(app.config["CONFIG_ENCRYPTION_KEY"], Path(app.instance_path),
                           app.config["PRODUCTION"])
    return lambda: SecretBox(keys)
