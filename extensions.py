"""Flask extensions, created unbound and initialised by the factory."""
from __future__ import annotations

from flask_migrate import Migrate

from mappers.configurable import load_mapping_file
from mappers.registry import VendorAdapter, build_registry

migrate = Migrate()


def load_vendor_registry(mapping_path: str | None) -> dict[str, VendorAdapter]:
    """Build the vendor adapters; a malformed mapping file stops start-up (MappingFileError)."""
    return build_registry(load_mapping_file(mapping_path) if mapping_path else None)
