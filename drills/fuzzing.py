"""Schemathesis fuzzing of the service, shared by the fuzz drill and the bounded test in `make test`.

Requests are generated from an OpenAPI document (the service's own /openapi.json, or the
Emarsys partner-service.yaml for the partner endpoints), in positive and negative mode,
each sent with valid credentials for its operation. Every answer must be below 500, and
every 4xx must carry a JSON body. Vendor `baseUrl` values in generated bodies are pointed at
a local sink first: /testConnection really calls the vendor, and a fuzzer must never make the
service send traffic anywhere but this machine.
"""
from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import HypothesisException
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Err

REPO = Path(__file__).resolve().parent.parent
PARTNER_SPEC_FILE = "partner-service.yaml"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
BODY_EXCERPT = 300
# What gunicorn answers on its own: bad request line or headers, URI or header fields too long.


def spec_dir() -> Path:
    """Return the folder of the Emarsys OpenAPI files (EMARSYS_SPEC_DIR, else ../shared/reference/...)."""
    configured = os.environ.get("EMARSYS_SPEC_DIR")
    return Path(configured) if configured else REPO.parent / "shared" / "reference" / "emarsys-sms-partner-api"


def load_partner_schema(folder: Path, base_url: str) -> schemathesis.BaseSchema:
    """Load partner-service.yaml, served at `base_url` (the spec's own server has a base path we do not)."""
    schema = schemathesis.openapi.from_path(str(folder / PARTNER_SPEC_FILE))
    schema.config.update(base_url=base_url)
    return schema


def load_own_schema(document: dict[str, Any], base_url: str) -> schemathesis.BaseSchema:
    """Load the service's own OpenAPI document, as /openapi.json answered it, served at `base_url`."""
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=base_url)
    return schema


def basic(user: str, password: str) -> str:
    """Return an HTTP Basic Authorization value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Credentials:
    """Valid credentials for every security scheme, and the local sink for vendor URLs."""

    sap: str
    admin: str
    bearer: Callable[[], str]  # a fresh "Bearer <jwt>" each call
    vendor_sink_url: str

    def for_schemes(self, scheme_names: list[str]) -> dict[str, str]:
        """Return the Authorization header satisfying the first of the named schemes."""
        for name in scheme_names:
            lowered = name.lower()
            if "sap" in lowered:
                return {"Authorization": self.sap}
            if "admin" in lowered:
                return {"Authorization": self.admin}
            return {"Authorization": self.bearer()}
        return {}


def security_schemes(operation: Any) -> list[str]:
    """Return the names of the schemes an operation accepts, in the order it lists them."""
    raw = operation.definition.raw
    requirements = raw.get("security", operation.schema.raw_schema.get("security", []))
    return [name for requirement in requirements for name in requirement]


@dataclass(frozen=True)
class Finding:
    """One answer that breaks the rules: a 5xx, a 4xx without a JSON body, or no answer."""

    operation: str
    mode: str
    status: int | None
    problem: str
    request: str
    body: str


@dataclass
class FuzzTally:
    """What a fuzz run sent and got back."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    operation_statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Return the tally as JSON-ready figures."""
        return {"requests": self.requests, "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "operations": len(self.per_operation), "findings": len(self.findings)}


def response_problem(status: int, content_type: str | None, body: bytes) -> str | None:
    """Return what is wrong with an answer, or None: no 5xx, and every 4xx has a JSON body."""
    if status >= 500:
        return f"server error {status}"
    if 400 <= status < 500:
        if not (content_type or "").split(";")[0].strip().lower().endswith("json"):
            return f"{status} with content type {content_type!r}, not JSON"
        try:
            json.loads(body)
        except ValueError:
            return f"{status} whose body is not valid JSON"
    return None


def point_vendor_urls_at(case: Case, sink_url: str) -> None:
    """Replace any vendor baseUrl in a generated configuration body with the local sink."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("customFieldValues"), dict):
        body["customFieldValues"]["baseUrl"] = sink_url


Caller = Callable[[Case, dict[str, str]], Any]


class Fuzzer:
    """Generate cases per operation and mode, send each with credentials, tally the answers.

    `known_path_values` (e.g. a configured client's id and callback token) give every
    operation with such path parameters a second pass that reaches past the 404 of an
    unknown id; `before_operation` runs before each operation (e.g. to configure that
    client again after a fuzzed DELETE removed it).
    """

    def __init__(self, call: Caller, credentials: Credentials, known_path_values: dict[str, str] | None = None,
                 before_operation: Callable[[], None] | None = None, derandomize: bool = False):
        self.call, self.credentials = call, credentials
        self.known_path_values = known_path_values or {}
        self.before_operation = before_operation
        self.derandomize = derandomize
        self.tally = FuzzTally()

    def fuzz_schema(self, schema: schemathesis.BaseSchema, examples: int, deadline: float) -> FuzzTally:
        """Fuzz every operation of a schema in both modes, until done or the monotonic deadline."""
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                self.tally.findings.append(Finding("(schema)", "-", None, f"unusable operation: {result.err()}",
                                                   "", ""))
                continue
            operation = result.ok()
            for fixed in self.path_value_passes(operation):
                for mode in MODES:
                    if time.monotonic() >= deadline:
                        self.tally.skipped.append(f"{operation.label} {mode.value}: time budget spent")
                        continue
                    if self.before_operation:
                        self.before_operation()
                    self.fuzz_operation(operation, mode, examples, fixed)
        return self.tally

    def path_value_passes(self, operation: Any) -> list[dict[str, str]]:
        """Return the path parameters to fix per pass: none, then the known values if any apply."""
        names = {parameter.name for parameter in operation.path_parameters}
        fixed = {name: value for name, value in self.known_path_values.items() if name in names}
        return [{}, fixed] if fixed else [{}]

    def fuzz_operation(self, operation: Any, mode: GenerationMode, examples: int,
                       fixed: dict[str, str] | None = None) -> None:
        """Send up to `examples` generated cases of one operation in one mode."""
        schemes = security_schemes(operation)
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

        @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=self.derandomize,
                             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                             verbosity=hypothesis.Verbosity.quiet)
        @hypothesis.given(case=strategy)
        def send_one(case: Case) -> None:
            self.send(case, mode, schemes)

        try:
            send_one()
        except HypothesisException as exc:  # e.g. no negative case can be built for this operation
            self.tally.skipped.append(f"{operation.label} {mode.value}: {type(exc).__name__}")

    def send(self, case: Case, mode: GenerationMode, schemes: list[str]) -> None:
        """Send one case and record its answer; never raise, so Hypothesis does not shrink."""
        point_vendor_urls_at(case, self.credentials.vendor_sink_url)
        headers = self.credentials.for_schemes(schemes)
        label = case.operation.label
        self.tally.requests += 1
        self.tally.per_operation[label] += 1
        try:
            response = self.call(case, headers)
        except Exception as exc:  # The transport failing is itself a finding (e.g. the server died).
            self.tally.findings.append(Finding(label, mode.value, None, f"no answer: {type(exc).__name__}",
                                               case.as_curl_command(headers=headers), str(exc)[:BODY_EXCERPT]))
            return
        self.tally.statuses[response.status_code] += 1
        self.tally.operation_statuses[(label, response.status_code)] += 1
        content_type = (response.headers.get("content-type") or [None])[0]
        problem = response_problem(response.status_code, content_type, response.content)
        if problem:
            self.tally.findings.append(Finding(label, mode.value, response.status_code, problem,
                                               case.as_curl_command(headers=headers),
                                               response.content[:BODY_EXCERPT].decode(errors="replace")))
