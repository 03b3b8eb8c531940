"""Configuration, read from the environment in this one place."""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

INSTANCE_DIR = Path(__file__).resolve().parent / "instance"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _count(env: dict[str, str], name: str, default: int) -> int:
    """Return a setting that counts records: a whole number of at least 1, or a start-up error naming it."""
    value = (env.get(name) or "").strip() or str(default)
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def normalise_database_url(url: str) -> str:
    """Return a SQLAlchemy URL on the psycopg2 driver; `postgres://` (Cloud Foundry style) is accepted."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _is_postgres_service(service: dict) -> bool:
    tags = [str(tag).lower() for tag in service.get("tags", [])]
    label = str(service.get("label", "")).lower()
    uri = str((service.get("credentials") or {}).get("uri", ""))
    return "postgresql" in tags or "postgres" in label or uri.startswith(("postgres://", "postgresql://"))


# Brokers spell the parts differently; the first name present wins.
_CREDENTIAL_ALIASES = {
    "hostname": ("hostname", "host"),
    "port": ("port",),
    "dbname": ("dbname", "database", "name"),
    "username": ("username", "user"),
    "password": ("password",),
}


def _url_from_credentials(credentials: dict) -> str | None:
    if credentials.get("uri"):
        return credentials["uri"]
    parts = {key: next((credentials[name] for name in names if credentials.get(name)), None)
             for key, names in _CREDENTIAL_ALIASES.items()}
    if all(parts.values()):
        user, password = quote(str(parts["username"]), safe=""), quote(str(parts["password"]), safe="")
        return (f"postgresql://{user}:{password}@{parts['hostname']}:"
                f"{parts['port']}/{quote(str(parts['dbname']), safe='')}")
    return None


def database_url_from_vcap(vcap_services: str | None) -> str | None:
    """Return the URL of the first bound PostgreSQL service in VCAP_SERVICES, if any."""
    if not vcap_services:
        return None
    for services in json.loads(vcap_services).values():
        for service in services:
            credentials = service.get("credentials") or {}
            url = _url_from_credentials(credentials)
            if url and _is_postgres_service(service):
                return url
    return None


def user_provided_settings(vcap_services: str | None, service_name: str | None) -> dict[str, str]:
    """Return the credentials of the user-provided service named `service_name`, as settings."""
    if not vcap_services or not service_name:
        return {}
    for service in json.loads(vcap_services).get("user-provided", []):
        if service.get("name") == service_name:
            return {str(k): str(v) for k, v in (service.get("credentials") or {}).items()}
    return {}


def load_config(environ: dict[str, str] | None = None) -> dict:
    """Build the Flask config mapping from environment variables."""
    env = dict(os.environ if environ is None else environ)
    env = {**user_provided_settings(env.get("VCAP_SERVICES"), env.get("CONFIG_SERVICE_NAME")), **env}
    database_url = env.get("DATABASE_URL") or database_url_from_vcap(env.get("VCAP_SERVICES"))
    if not database_url:
        database_url = f"sqlite:///{INSTANCE_DIR / 'sms-status.sqlite3'}"
    return {
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(database_url),
        "SQLALCHEMY_ENGINE_OPTIONS": _engine_options(database_url, env),
        "SAP_STATUS_USERNAME": env.get("SAP_STATUS_USERNAME") or None,
        "SAP_STATUS_PASSWORD": env.get("SAP_STATUS_PASSWORD") or None,
        "STATUS_PAGE_SIZE": _count(env, "STATUS_PAGE_SIZE", 100),
        # The blog's `/api/v1/notifications/get` without parameters answers every record, which
        # for a busy day is more than a 512 MB instance holds: beyond this many, it says lastPage false.
        "STATUS_GET_ALL_LIMIT": _count(env, "STATUS_GET_ALL_LIMIT", 10000),
        "ENABLE_CLEAR_ENDPOINT": _flag(env.get("ENABLE_CLEAR_ENDPOINT")),
        # A vendor receipt is a few hundred bytes and a partner batch of 1,000 messages a few MB;
        # a larger body is refused with 413 before it is read into memory.
        "MAX_CONTENT_LENGTH": int(env.get("MAX_REQUEST_BYTES", str(16 * 1024 * 1024))),
        # The open vendor URLs take anyone's body into raw_events: a receipt or a 10-part SMS is a few KB.
        "MAX_VENDOR_REQUEST_BYTES": int(env.get("MAX_VENDOR_REQUEST_BYTES", str(64 * 1024))),
        "PRODUCTION": _flag(env.get("PRODUCTION")) or "VCAP_APPLICATION" in env,
        "VENDOR_MAPPINGS_FILE": env.get("VENDOR_MAPPINGS_FILE") or None,
        "TWILIO_AUTH_TOKEN": env.get("TWILIO_AUTH_TOKEN") or None,
        "PUBLIC_BASE_URL": (env.get("PUBLIC_BASE_URL") or "http://localhost:8080").rstrip("/"),
        "CONFIG_ENCRYPTION_KEY": env.get("CONFIG_ENCRYPTION_KEY") or None,
        "EMARSYS_JWKS_URL": env.get("EMARSYS_JWKS_URL", "https://smsemarsys.accounts.ondemand.com/oauth2/certs"),
        "EMARSYS_TOKEN_ISSUER": env.get("EMARSYS_TOKEN_ISSUER", "https://smsemarsys.accounts.ondemand.com"),
        "EMARSYS_OAUTH_CLIENT_ID": env.get("EMARSYS_OAUTH_CLIENT_ID") or None,
        "EMARSYS_API_BASE_URL": env.get("EMARSYS_API_BASE_URL", "https://api.emarsys.net/sms/partner/v1"),
        # The token URL the callbacks' contract names (partner-callbacks.yaml, clientCredentials).
        "PARTNER_OAUTH_TOKEN_URL": env.get("PARTNER_OAUTH_TOKEN_URL",
                                           "https://smsemarsys.accounts.ondemand.com/oauth2/token") or None,
        "PARTNER_OAUTH_CLIENT_ID": env.get("PARTNER_OAUTH_CLIENT_ID") or None,
        "PARTNER_OAUTH_CLIENT_SECRET": env.get("PARTNER_OAUTH_CLIENT_SECRET") or None,
        "FORWARD_LINGER_MS": int(env.get("FORWARD_LINGER_MS", "1000")),
        "FORWARD_RETRY_SCHEDULE": env.get("FORWARD_RETRY_SCHEDULE", "5s,1m,5m,30m,2h,5h"),
        "FORWARD_MAX_AGE": env.get("FORWARD_MAX_AGE", "3d"),
        "FORWARD_BATCH_SIZE": int(env.get("FORWARD_BATCH_SIZE", "1000")),
        "SEND_RETRY_DELAY_SECONDS": float(env.get("SEND_RETRY_DELAY_SECONDS", "30")),
        "SEND_MAX_ATTEMPTS": int(env.get("SEND_MAX_ATTEMPTS", "10")),
        "VENDOR_TIMEOUT_SECONDS": float(env.get("VENDOR_TIMEOUT_SECONDS", "10")),
        # A client's baseUrl is not trusted: off, vendor calls reach only public addresses.
        "VENDOR_ALLOW_PRIVATE_ADDRESSES": _flag(env.get("VENDOR_ALLOW_PRIVATE_ADDRESSES")),
        "LEASE_SECONDS": int(env.get("LEASE_SECONDS", "60")),
        "DISPATCH_BATCH_SIZE": int(env.get("DISPATCH_BATCH_SIZE", "200")),
        "DISPATCH_CONCURRENCY": int(env.get("DISPATCH_CONCURRENCY", "16")),
        "RETENTION_DAYS": _count(env, "RETENTION_DAYS", 30),
        "PURGE_BATCH_SIZE": _count(env, "PURGE_BATCH_SIZE", 5000),
        "PURGE_INTERVAL_SECONDS": float(env.get("PURGE_INTERVAL_SECONDS", "300")),
        "PURGE_MAX_BATCHES": _count(env, "PURGE_MAX_BATCHES", 20),
        "ADMIN_USERNAME": env.get("ADMIN_USERNAME") or None,
        "ADMIN_PASSWORD": env.get("ADMIN_PASSWORD") or None,
        # prometheus_client itself reads this variable at import; the scrape must agree with it.
        "PROMETHEUS_MULTIPROC_DIR": env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        "METRICS_CACHE_SECONDS": float(env.get("METRICS_CACHE_SECONDS", "5")),
    }


def _engine_options(database_url: str, env: dict[str, str]) -> dict:
    # A database error's message must not carry the statement's parameters into the log: they
    # hold phone numbers, message texts and vendor payloads.
    if not database_url.startswith(("postgres://", "postgresql")):
        return {"hide_parameters": True}
    # Fail fast while PostgreSQL is down instead of hanging the vendor's request. No pre-ping:
    # it would cost the hot path a second round trip; a dropped connection fails one request
    # with 503 and SQLAlchemy then replaces the whole pool.
    timeout = int(env.get("DATABASE_CONNECT_TIMEOUT", "3"))
    statement_ms = int(env.get("DATABASE_STATEMENT_TIMEOUT_MS", "10000"))
    return {"hide_parameters": True, "pool_recycle": 1800,
            "connect_args": {"connect_timeout": timeout, "options": f"-c statement_timeout={statement_ms}"}}
