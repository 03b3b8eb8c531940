"""Test helper: validate JSON instances against the official Emarsys SMS Partner API OpenAPI files.

Usage from any test module::

    from tests.emarsys_spec import requires_spec, validate_schema

    @requires_spec
    def test_something():
        validate_schema("partner-callbacks.yaml", "DeliveryReportBatch", body)

Cross-file ``$ref``s such as ``./common.yaml#/components/schemas/ReceivedAt`` are resolved
with ``referencing``; instances are checked with the OpenAPI 3.0 dialect of
``openapi-schema-validator`` and with formats (date-time, uuid, uri, ...) asserted.

Known quirks of the spec files that callers must respect:

- ``OutboundMessageBatchError`` is a ``oneOf`` of two object schemas without required keys,
  so every object matches both branches and the ``oneOf`` always fails. Validate the concrete
  branch instead: ``OutboundMessageBatchGlobalError`` for a body with ``globalError``,
  ``OutboundMessageBatchMessageSpecificError`` for one with ``messageSpecificErrors``.
  ``validate_schema`` refuses the composite name so such a test cannot pass or fail by accident.
- ``InvalidFieldErrors``, ``InvalidFormatErrorBatch`` and ``ClientCallbackUrls`` require no keys:
  a schema check cannot prove that ``errors`` or the URLs are present, so assert that too.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import FormatChecker
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = Path(os.environ.get("EMARSYS_SPEC_DIR")
                or REPO_ROOT.parent / "shared" / "reference" / "emarsys-sms-partner-api")

requires_spec = pytest.mark.skipif(
    not SPEC_DIR.exists(),
    reason=f"Emarsys OpenAPI files not found at {SPEC_DIR}; set EMARSYS_SPEC_DIR")

# Schemas whose own definition can never validate; the value says what to validate instead.
UNVALIDATABLE_SCHEMAS = {
    "OutboundMessageBatchError": (
        "its oneOf branches have no required keys, so any object matches both; validate "
        "OutboundMessageBatchGlobalError or OutboundMessageBatchMessageSpecificError instead"),
}


class SpecMismatch(AssertionError):
    """An instance does not conform to a schema of the Emarsys OpenAPI files."""

    def __init__(self, target: str, errors: list[ValidationError]):
        lines = [_describe(error, "  ") for error in errors]
        super().__init__(f"instance does not match {target}:\n" + "\n".join(lines))
        self.errors = errors


def _describe(error: ValidationError, indent: str) -> str:
    """Return one error, and for oneOf/anyOf the reasons each branch failed, as indented lines."""
    # Long instances would drown the reason; the path already says where to look.
    lines = [f"{indent}at {error.json_path}: {error.message[:200]}"]
    lines += [_describe(branch_error, indent + "    ") for branch_error in error.context or ()]
    return "\n".join(lines)


def _is_uri(instance: object) -> bool:
    """Return whether a string looks like an absolute URI (no rfc3987 package is installed)."""
    if not isinstance(instance, str):
        return True
    parts = urlsplit(instance)
    return bool(parts.scheme) and bool(parts.netloc or parts.path) and not any(
        char.isspace() for char in instance)


def _format_checker() -> FormatChecker:
    """Return a checker asserting the JSON Schema formats plus the OpenAPI 3.0 ones."""
    checker = FormatChecker()
    for name, (check, raises) in oas30_format_checker.checkers.items():
        checker.checks(name, raises)(check)
    checker.checks("uri")(_is_uri)
    return checker


FORMAT_CHECKER = _format_checker()


@lru_cache(maxsize=1)
def _documents() -> dict[str, tuple[str, dict[str, Any]]]:
    """Load every YAML file of SPEC_DIR, keyed by file name, with its file URI."""
    if not SPEC_DIR.is_dir():
        raise FileNotFoundError(f"Emarsys OpenAPI files not found at {SPEC_DIR}; set EMARSYS_SPEC_DIR")
    documents = {}
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        documents[path.name] = (path.resolve().as_uri(), yaml.safe_load(path.read_text("utf-8")))
    return documents


@lru_cache(maxsize=1)
def _registry() -> Registry:
    """Return a registry holding every spec file under its file URI, so relative $refs resolve."""
    # OpenAPI 3.0 schemas follow draft 4 rules for ids and $ref, hence that specification.
    resources = [(uri, Resource(contents=document, specification=DRAFT4))
                 for uri, document in _documents().values()]
    return Registry().with_resources(resources)


def _resolve_pointer(document: dict[str, Any], pointer: str) -> Any:
    """Return the node of a document at a JSON pointer, or raise LookupError."""
    node: Any = document
    for raw in pointer.strip("/").split("/"):
        segment = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or segment not in node:
            raise LookupError(f"no {segment!r} on the way to {pointer!r}")
        node = node[segment]
    return node


def validate_pointer(file_name: str, pointer: str, instance: Any) -> None:
    """Validate an instance against the schema at a JSON pointer of a spec file; raise SpecMismatch."""
    documents = _documents()
    if file_name not in documents:
        raise LookupError(f"{file_name} is not in {SPEC_DIR}; known: {sorted(documents)}")
    uri, document = documents[file_name]
    _resolve_pointer(document, pointer)
    validator = OAS30Validator({"$ref": f"{uri}#{pointer}"}, registry=_registry(),
                               format_checker=FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda error: list(error.path))
    if errors:
        raise SpecMismatch(f"{file_name}#{pointer}", errors)


def validate_schema(file_name: str, schema_name: str, instance: Any) -> None:
    """Validate an instance against components/schemas/<schema_name> of a spec file; raise SpecMismatch."""
    if schema_name in UNVALIDATABLE_SCHEMAS:
        raise ValueError(f"{schema_name} cannot be validated: {UNVALIDATABLE_SCHEMAS[schema_name]}")
    validate_pointer(file_name, f"/components/schemas/{schema_name}", instance)
