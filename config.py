"""Configuration, read from the environment in this one place."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from errors import StartupError
from services.emarsys_client import MAX_BATCH_SIZE
from services.retry import parse_max_age, parse_schedule

INSTANCE_DIR = Path(__file__).resolve().parent / "instance"
MAX_SETTING_SECONDS = 365 * 86400.0
MAX_WHOLE = 2**31 - 1
# A century: a longer retention puts its cutoff before the year 1.
MAX_RETENTION_DAYS = 36500


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _count(env: dict[str, str], name: str, default: int, maximum: int = MAX_WHOLE, why: str = "") -> int:
    """Return a setting that counts records: a whole number of at least 1, or a start-up error naming it."""
    return _whole(env, name, default, minimum=1, maximum=maximum, why=why)


def _whole(env: dict[str, str], name: str, default: int, minimum: int = 0, maximum: int = MAX_WHOLE,
           why: str = "") -> int:
    """Return a whole-number setting from `minimum` to `maximum`, or a start-up error naming it (and `why`)."""
    value = (env.get(name) or "").strip() or str(default)
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise StartupError(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    if int(value) > maximum:
        # Larger, it overflows a database integer or a date computed from it, later and with a traceback.
        raise StartupError(f"{name} must be at most {maximum}{f' ({why})' if why else ''}, not {value}")
    return int(value)


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    """Return a duration setting in seconds (a number, 0 or more), or a start-up error naming it."""
    value = (env.get(name) or "").strip() or str(default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    # Over a year, a time the worker computes from it (now plus a retry delay) may pass the year 9999.
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_SETTING_SECONDS:
        raise StartupError(f"{name} must be a number of seconds, 0 or more, up to {MAX_SETTING_SECONDS:.0f} "
                           f"(a year), not {value!r}")
    return seconds


def _positive_seconds(env: dict[str, str], name: str, default: float) -> float:
    """Return a duration setting in seconds that must be more than 0, or a start-up error naming it."""
    seconds = _seconds(env, name, default)
    if seconds == 0:
        raise StartupError(f"{name} must be more than 0 seconds")
    return seconds


def _text(env: dict[str, str], name: str, default: str) -> str:
    """Return a text setting, or its default when it is unset or blank."""
    return (env.get(name) or "").strip() or default


def _parsed(env: dict[str, str], name: str, default: str, parse) -> str:
    """Return a setting `parse` reads (a duration or a schedule), checked now, or a start-up error naming it."""
    value = env.get(name, default)
    try:
        parse(value)
    except ValueError as error:
        # The web process must not start while the worker, which reads it, would refuse to.
        raise StartupError(f"{name}: {error}") from None
    return value


def _public_base_url(env: dict[str, str]) -> str:
    """Return PUBLIC_BASE_URL without a trailing slash; a start-up error unless it is an absolute http(s) URL."""
    value = (env.get("PUBLIC_BASE_URL") or "http://localhost:8080").strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Callback URLs are built on it: a relative one would reach neither the vendor nor Emarsys.
        raise StartupError(f"PUBLIC_BASE_URL must be an absolute http(s) URL such as https://sms.example.com, "
                           f"not {value!r}")
    return value


def _basic_user(env: dict[str, str], name: str) -> str | None:
    """Return a Basic auth user name (None if unset), or a start-up error naming it if it holds a colon."""
    value = env.get(name) or None
    if value is not None and ":" in value:
        # Basic credentials split at the first colon: such a user could never log in.
        raise StartupError(f"{name} must not contain ':' (HTTP Basic auth ends the user name at the first colon)")
    return value


def _basic_credentials(env: dict[str, str], user_name: str, password_name: str) -> dict[str, str | None]:
    """Return a Basic auth user and password (both None if unset), or a start-up error if only one is set."""
    user, password = _basic_user(env, user_name), env.get(password_name) or None
    if (user is None) != (password is None):
        # Half a pair reads as "not set": outside production that would leave the endpoint open.
        given, missing = (user_name, password_name) if password is None else (password_name, user_name)
        raise StartupError(f"{given} is set but {missing} is not: set both, or neither")
    return {user_name: user, password_name: password}


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
    url = credentials.get("uri") or _url_from_parts(credentials)
    return _with_binding_tls(url, credentials) if url else None


def _url_from_parts(credentials: dict) -> str | None:
    parts = {key: next((credentials[name] for name in names if credentials.get(name)), None)
             for key, names in _CREDENTIAL_ALIASES.items()}
    parts["port"] = parts["port"] or 5432  # brokers that omit it mean PostgreSQL's own
    if not all(parts.values()):
        return None
    user, password = quote(str(parts["username"]), safe=""), quote(str(parts["password"]), safe="")
    return (f"postgresql://{user}:{password}@{parts['hostname']}:{parts['port']}/"
            f"{quote(str(parts['dbname']), safe='')}")


def _with_binding_tls(url: str, credentials: dict) -> str:
    """Add the binding's sslmode and root certificate to its URL, unless the URL names them itself.

    Dropped, libpq would settle for sslmode "prefer": encrypted if the server offers it, but with
    any certificate. Brokers such as SAP BTP's PostgreSQL give the CA certificate itself, not a
    file, in `sslrootcert`, and no sslmode: a root certificate then means verify-full, since a
    broker's CA (a cloud's regional one) also signs every other customer's database.
    """
    query = dict(parse_qsl(urlsplit(url).query))
    added = {}
    if credentials.get("sslrootcert") and "sslrootcert" not in query:
        added["sslrootcert"] = str(_root_certificate_file(str(credentials["sslrootcert"])))
    has_root_certificate = "sslrootcert" in query or "sslrootcert" in added
    sslmode = credentials.get("sslmode") or ("verify-full" if has_root_certificate else None)
    if sslmode and "sslmode" not in query:
        added["sslmode"] = sslmode
    if not added:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(added)


def _root_certificate_file(pem: str) -> Path:
    """Write the binding's CA certificate to a file libpq can read, named by its content."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise StartupError("the bound PostgreSQL service's sslrootcert is not a PEM certificate "
                           "(-----BEGIN CERTIFICATE-----)")
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"sms-status-db-root-{digest}.pem"
    if _is_own_file_holding(path, pem):
        return path
    try:
        # Written aside and renamed: gunicorn's workers and the CLI may start at the same moment,
        # and a file someone else left under that name is replaced, never trusted.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as staged:
            staged.write(pem)
        os.replace(staged.name, path)
    except OSError as error:
        raise StartupError(f"cannot write the database's root certificate to {path}: {error.strerror}") from None
    return path


def _is_own_file_holding(path: Path, content: str) -> bool:
    try:
        return path.stat().st_uid == os.getuid() and not path.is_symlink() and path.read_text() == content
    except (OSError, UnicodeDecodeError):
        return False


def _has_database_parts(service: dict) -> bool:
    """Tell whether an unmarked service's credentials are a database's parts and no other kind's uri."""
    credentials = service.get("credentials") or {}
    return not credentials.get("uri") and _url_from_parts(credentials) is not None


def database_url_from_vcap(vcap_services: str | None) -> str | None:
    """Return the URL of the first bound PostgreSQL service in VCAP_SERVICES, if any.

    A service marked as PostgreSQL (tag, label or uri) wins; failing one, the first whose credentials
    hold hostname, dbname, username and password, such as a `cf cups` binding without `-t postgresql`.
    """
    if not vcap_services:
        return None
    services = [service for entries in _vcap(vcap_services).values() for service in entries]
    for matches in (_is_postgres_service, _has_database_parts):
        for service in filter(matches, services):
            url = _url_from_credentials(service.get("credentials") or {})
            if url:
                return url
    return None


def user_provided_settings(vcap_services: str | None, service_name: str | None) -> dict[str, str]:
    """Return the credentials of the user-provided service named `service_name`, as settings."""
    if not vcap_services or not service_name:
        return {}
    for service in _vcap(vcap_services).get("user-provided", []):
        if service.get("name") == service_name:
            return {str(k): str(v) for k, v in (service.get("credentials") or {}).items()}
    return {}


def _vcap(vcap_services: str) -> dict:
    try:
        services = json.loads(vcap_services)
    except ValueError as error:
        raise StartupError(f"VCAP_SERVICES is not JSON: {error}") from None
    if not isinstance(services, dict):
        raise StartupError("VCAP_SERVICES must be a JSON object of service lists")
    for label, entries in services.items():
        _check_vcap_services(label, entries)
    return services


def _check_vcap_services(label: str, entries: object) -> None:
    """Stop start-up, naming the entry, unless it is a list of service objects whose credentials are objects."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise StartupError(f"VCAP_SERVICES[{label!r}] must be a list of service objects")
    for index, entry in enumerate(entries):
        if not isinstance(entry.get("credentials") or {}, dict):
            raise StartupError(f"VCAP_SERVICES[{label!r}][{index}]['credentials'] must be an object")


def load_config(environ: dict[str, str] | None = None) -> dict:
    """Build the Flask config mapping from environment variables."""
    env = dict(os.environ if environ is None else environ)
    env = {**user_provided_settings(env.get("VCAP_SERVICES"), env.get("CONFIG_SERVICE_NAME")), **env}
    database_url = _database_url(env)
    config = {
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(database_url),
        "SQLALCHEMY_ENGINE_OPTIONS": _engine_options(database_url, env),
        **_basic_credentials(env, "SAP_STATUS_USERNAME", "SAP_STATUS_PASSWORD"),
        "STATUS_PAGE_SIZE": _count(env, "STATUS_PAGE_SIZE", 100),
        # The blog's `/api/v1/notifications/get` without parameters answers every record, which
        # for a busy day is more than a 512 MB instance holds: beyond this many, it says lastPage false.
        "STATUS_GET_ALL_LIMIT": _count(env, "STATUS_GET_ALL_LIMIT", 10000),
        "ENABLE_CLEAR_ENDPOINT": _flag(env.get("ENABLE_CLEAR_ENDPOINT")),
        # A vendor receipt is a few hundred bytes and a partner batch of 1,000 messages a few MB;
        # a larger body is refused with 413 before it is read into memory.
        "MAX_CONTENT_LENGTH": _whole(env, "MAX_REQUEST_BYTES", 16 * 1024 * 1024, minimum=1),
        # The open vendor URLs take anyone's body into raw_events: a receipt or a 10-part SMS is a few KB.
        "MAX_VENDOR_REQUEST_BYTES": _whole(env, "MAX_VENDOR_REQUEST_BYTES", 64 * 1024, minimum=1),
        "PRODUCTION": _is_production(env),
        "VENDOR_MAPPINGS_FILE": env.get("VENDOR_MAPPINGS_FILE") or None,
        "TWILIO_AUTH_TOKEN": env.get("TWILIO_AUTH_TOKEN") or None,
        "PUBLIC_BASE_URL": _public_base_url(env),
        "CONFIG_ENCRYPTION_KEY": env.get("CONFIG_ENCRYPTION_KEY") or None,
        # Blank means the default, as for the counts: empty, the verifier could not be built (a traceback
        # at start-up), and an empty callback base URL would make every forward fail for good.
        "EMARSYS_JWKS_URL": _text(env, "EMARSYS_JWKS_URL", "https://smsemarsys.accounts.ondemand.com/oauth2/certs"),
        "EMARSYS_TOKEN_ISSUER": _text(env, "EMARSYS_TOKEN_ISSUER", "https://smsemarsys.accounts.ondemand.com"),
        "EMARSYS_OAUTH_CLIENT_ID": env.get("EMARSYS_OAUTH_CLIENT_ID") or None,
        "EMARSYS_API_BASE_URL": _text(env, "EMARSYS_API_BASE_URL", "https://api.emarsys.net/sms/partner/v1"),
        # The token URL the callbacks' contract names (partner-callbacks.yaml, clientCredentials).
        "PARTNER_OAUTH_TOKEN_URL": env.get("PARTNER_OAUTH_TOKEN_URL",
                                           "https://smsemarsys.accounts.ondemand.com/oauth2/token") or None,
        "PARTNER_OAUTH_CLIENT_ID": env.get("PARTNER_OAUTH_CLIENT_ID") or None,
        "PARTNER_OAUTH_CLIENT_SECRET": env.get("PARTNER_OAUTH_CLIENT_SECRET") or None,
        "FORWARD_LINGER_MS": _whole(env, "FORWARD_LINGER_MS", 1000),
        "FORWARD_RETRY_SCHEDULE": _parsed(env, "FORWARD_RETRY_SCHEDULE", "5s,1m,5m,30m,2h,5h", parse_schedule),
        "FORWARD_MAX_AGE": _parsed(env, "FORWARD_MAX_AGE", "3d", parse_max_age),
        # The web process refuses what the worker, which reads it, would refuse.
        "FORWARD_BATCH_SIZE": _count(env, "FORWARD_BATCH_SIZE", MAX_BATCH_SIZE, maximum=MAX_BATCH_SIZE,
                                     why="the most Emarsys takes in one call"),
        "SEND_RETRY_DELAY_SECONDS": _seconds(env, "SEND_RETRY_DELAY_SECONDS", 30),
        "SEND_MAX_ATTEMPTS": _count(env, "SEND_MAX_ATTEMPTS", 10),
        "VENDOR_TIMEOUT_SECONDS": _positive_seconds(env, "VENDOR_TIMEOUT_SECONDS", 10),
        # A client's baseUrl is not trusted: off, vendor calls reach only public addresses.
        "VENDOR_ALLOW_PRIVATE_ADDRESSES": _flag(env.get("VENDOR_ALLOW_PRIVATE_ADDRESSES")),
        "LEASE_SECONDS": _count(env, "LEASE_SECONDS", 60),
        # How long a migration waits for a table lock before it gives up and is tried again.
        "MIGRATION_LOCK_TIMEOUT_MS": _whole(env, "MIGRATION_LOCK_TIMEOUT_MS", 5000, minimum=1),
        "DISPATCH_BATCH_SIZE": _count(env, "DISPATCH_BATCH_SIZE", 200),
        "DISPATCH_CONCURRENCY": _count(env, "DISPATCH_CONCURRENCY", 16),
        "RETENTION_DAYS": _count(env, "RETENTION_DAYS", 30, maximum=MAX_RETENTION_DAYS),
        "PURGE_BATCH_SIZE": _count(env, "PURGE_BATCH_SIZE", 5000),
        "PURGE_INTERVAL_SECONDS": _seconds(env, "PURGE_INTERVAL_SECONDS", 300),
        "PURGE_MAX_BATCHES": _count(env, "PURGE_MAX_BATCHES", 20),
        **_basic_credentials(env, "ADMIN_USERNAME", "ADMIN_PASSWORD"),
        # prometheus_client itself reads this variable at import; the scrape must agree with it.
        "PROMETHEUS_MULTIPROC_DIR": env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        "METRICS_CACHE_SECONDS": _seconds(env, "METRICS_CACHE_SECONDS", 5),
        "METRICS_DATABASE_TIMEOUT_MS": _whole(env, "METRICS_DATABASE_TIMEOUT_MS", 2000, minimum=1),
    }
    _check_dispatch_settings(config)
    return config


def _check_dispatch_settings(config: dict) -> None:
    """Refuse a lease a send could outlive here too, so the web process stops as the worker would."""
    # Only the worker reads them, but a web process that started would take campaigns that no
    # worker sends while the worker is refused (on Cloud Foundry, restarted) for ever.
    from services.dispatcher import DispatchSettings

    try:
        DispatchSettings.from_config(config)
    except ValueError as error:
        raise StartupError(str(error)) from None


def _is_production(env: dict[str, str]) -> bool:
    return _flag(env.get("PRODUCTION")) or "VCAP_APPLICATION" in env


def _database_url(env: dict[str, str]) -> str:
    if env.get("DATABASE_URL"):
        return _checked_database_url(env["DATABASE_URL"], "DATABASE_URL")
    url = database_url_from_vcap(env.get("VCAP_SERVICES"))
    if url:
        return _checked_database_url(url, "the bound PostgreSQL service in VCAP_SERVICES")
    if _is_production(env):
        # Each instance would keep a file of its own, lost on restage and unseen by the worker.
        raise StartupError("no database: set DATABASE_URL or bind a PostgreSQL service "
                           "(VCAP_SERVICES names none with a uri or hostname, dbname, username and password)")
    return f"sqlite:///{INSTANCE_DIR / 'sms-status.sqlite3'}"


# The drivers installed: psycopg2 (SQLAlchemy's default for postgresql://) and sqlite3; postgres:// is
# Cloud Foundry's spelling (see normalise_database_url).
_DATABASE_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg2", "sqlite", "sqlite+pysqlite"}
_NOT_SHOWN = "not shown: it may hold a password"


def _checked_database_url(url: str, source: str) -> str:
    """Return the database URL as given, or a start-up error naming its source but never showing the URL."""
    # Echoed, the URL would put the database password in the log.
    try:
        parsed = make_url(url)
        port = parsed.port  # read here, as SQLAlchemy otherwise would later with a traceback
    except ArgumentError:
        raise StartupError(f"{source} is not a database URL such as "
                           f"postgresql://user:password@host:5432/dbname ({_NOT_SHOWN})") from None
    except ValueError:
        raise StartupError(f"{source} has a port that is not a number ({_NOT_SHOWN})") from None
    if parsed.drivername not in _DATABASE_DRIVERS:
        raise StartupError(f"{source} must be a postgresql://, postgres:// or sqlite:// URL, "
                           f"not {parsed.drivername}://")
    if port is not None and not 1 <= port <= 65535:
        # Not echoed: in a URL missing its host, "user:password" reads as host and port.
        raise StartupError(f"{source} has a port outside 1 to 65535 ({_NOT_SHOWN})")
    return url


def _engine_options(database_url: str, env: dict[str, str]) -> dict:
    # A database error's message must not carry the statement's parameters into the log: they
    # hold phone numbers, message texts and vendor payloads.
    if not database_url.startswith(("postgres://", "postgresql")):
        return {"hide_parameters": True}
    # Fail fast while PostgreSQL is down instead of hanging the vendor's request. No pre-ping:
    # it would cost the hot path a second round trip; a dropped connection fails one request
    # with 503 and SQLAlchemy then replaces the whole pool.
    timeout = _count(env, "DATABASE_CONNECT_TIMEOUT", 3)
    statement_ms = _whole(env, "DATABASE_STATEMENT_TIMEOUT_MS", 10000)
    return {"hide_parameters": True, "pool_recycle": 1800,
            "connect_args": {"connect_timeout": timeout, "options": f"-c statement_timeout={statement_ms}"}}
