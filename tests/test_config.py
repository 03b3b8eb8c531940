"""Configuration read from the environment."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from config import database_url_from_vcap, load_config, normalise_database_url
from services.retry import RetryPolicy
from errors import StartupError
from tests.emarsys_spec import SPEC_DIR, requires_spec


@pytest.mark.parametrize("url, expected", [
    ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
    ("postgresql://u:p@h/d", "postgresql+psycopg2://u:p@h/d"),
    ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
    ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_database_urls_are_normalised(url, expected):
    assert normalise_database_url(url) == expected


@pytest.mark.parametrize("services, expected", [
    ({"postgresql-db": [{"name": "db", "tags": ["postgresql"], "credentials": {"uri": "postgres://a:b@h:1/d"}}]},
     "postgres://a:b@h:1/d"),
    ({"user-provided": [{"name": "pg", "credentials": {"hostname": "h", "port": 5432, "dbname": "d",
                                                       "username": "u", "password": "p@ss"}, "tags": ["postgresql"]}]},
     "postgresql://u:p%40ss@h:5432/d"),
    ({"redis": [{"name": "cache", "tags": ["redis"], "credentials": {"uri": "redis://h:6379"}}]}, None),
    # A broker that leaves out the port means PostgreSQL's own; its TLS demand is kept.
    ({"postgresql-db": [{"tags": ["postgresql"], "credentials": {"host": "h", "dbname": "d", "username": "u",
                                                                 "password": "p", "sslmode": "verify-full"}}]},
     "postgresql://u:p@h:5432/d?sslmode=verify-full"),
])
def test_bound_postgresql_service_is_found_in_vcap_services(services, expected):
    assert database_url_from_vcap(json.dumps(services)) == expected


@pytest.mark.parametrize("services, expected", [
    # A customer's database bound with `cf cups` and no tag: its credentials alone say what it is.
    ({"user-provided": [{"name": "customer-db", "label": "user-provided", "tags": [], "credentials": {
        "hostname": "h", "port": "6432", "dbname": "d", "username": "u", "password": "p"}}]},
     "postgresql://u:p@h:6432/d"),
    # A service marked as PostgreSQL wins over an unmarked one listed before it.
    ({"user-provided": [{"name": "other", "credentials": {"hostname": "x", "dbname": "x", "username": "x",
                                                         "password": "x"}}],
      "postgresql-db": [{"name": "db", "label": "postgresql-db", "credentials": {"uri": "postgres://a:b@h/d"}}]},
     "postgres://a:b@h/d"),
    # Another kind of database, unmarked: its uri names it.
    ({"user-provided": [{"name": "mysql", "credentials": {"uri": "mysql://u:p@h/d", "hostname": "h", "dbname": "d",
                                                         "username": "u", "password": "p"}}]}, None),
    # Not a database at all: no dbname.
    ({"user-provided": [{"name": "smtp", "credentials": {"hostname": "h", "username": "u", "password": "p"}}]},
     None),
])
def test_an_untagged_service_with_a_databases_credentials_is_the_database(services, expected):
    assert database_url_from_vcap(json.dumps(services)) == expected


def test_database_url_wins_over_vcap_services():
    vcap = json.dumps({"postgresql-db": [{"tags": ["postgresql"], "credentials": {"uri": "postgres://vcap/d"}}]})
    config = load_config({"DATABASE_URL": "postgres://env/d", "VCAP_SERVICES": vcap})
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://env/d"


@pytest.mark.parametrize("environ, message", [
    ({"DATABASE_URL": "postgresql://u:db-S3cret@h:abc/db"}, "DATABASE_URL has a port that is not a number"),
    ({"DATABASE_URL": "postgresql://u:db-S3cret@h:70000/db"}, "DATABASE_URL has a port outside 1 to 65535"),
    # No host: "sms:73915482" reads as host and port, so the port is the password and never shown.
    ({"DATABASE_URL": "postgresql://sms:73915482/sms"}, "DATABASE_URL has a port outside 1 to 65535 (not shown"),
    ({"DATABASE_URL": "db-S3cret"}, "DATABASE_URL is not a database URL such as postgresql://"),
    ({"DATABASE_URL": "mysql://u:db-S3cret@h/y"},
     "DATABASE_URL must be a postgresql://, postgres:// or sqlite:// URL, not mysql://"),
    ({"DATABASE_URL": "postgresql+asyncpg://u:db-S3cret@h/y"}, "DATABASE_URL must be a postgresql://"),
    ({"VCAP_SERVICES": json.dumps({"postgresql-db": [{"tags": ["postgresql"], "credentials": {
        "hostname": "h", "port": "five", "dbname": "d", "username": "u", "password": "db-S3cret"}}]})},
     "the bound PostgreSQL service in VCAP_SERVICES has a port that is not a number"),
])
def test_a_database_url_that_cannot_be_used_stops_start_up_without_showing_it(environ, message):
    with pytest.raises(StartupError, match=f"^{re.escape(message)}") as raised:
        load_config(environ)
    assert "db-S3cret" not in str(raised.value)  # the URL carries the password


@pytest.mark.parametrize("url", ["postgres://u:p@h:5432/d", "postgresql+psycopg2://u@/d?host=/tmp", "sqlite://",
                                 "sqlite+pysqlite:///x.db"])
def test_database_urls_of_the_installed_drivers_start(url):
    assert load_config({"DATABASE_URL": url})["SQLALCHEMY_DATABASE_URI"].endswith(url.partition("://")[2])


def test_defaults():
    config = load_config({})
    assert (config["STATUS_PAGE_SIZE"], config["ENABLE_CLEAR_ENDPOINT"]) == (100, False)
    assert config["RETENTION_DAYS"] == 30


def test_production_start_without_pull_credentials_logs_a_loud_warning(caplog):
    from app import create_app
    caplog.set_level("WARNING")
    create_app({"PRODUCTION": True, "SAP_STATUS_USERNAME": None, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert any("SAP_STATUS_USERNAME" in record.getMessage() for record in caplog.records)


COUNTS = ["STATUS_PAGE_SIZE", "STATUS_GET_ALL_LIMIT", "RETENTION_DAYS", "PURGE_BATCH_SIZE", "PURGE_MAX_BATCHES",
          "FORWARD_BATCH_SIZE", "SEND_MAX_ATTEMPTS", "LEASE_SECONDS", "DISPATCH_BATCH_SIZE", "DISPATCH_CONCURRENCY",
          "MAX_REQUEST_BYTES", "MAX_VENDOR_REQUEST_BYTES"]


@pytest.mark.parametrize("name", COUNTS)
@pytest.mark.parametrize("value", ["0", "-5", "ten", "1.5", "²", "16MB"])
def test_counts_below_one_or_not_whole_stop_start_up_naming_the_setting(name, value):
    with pytest.raises(StartupError, match=f"^{name} must be a whole number of at least 1, not '"):
        load_config({name: value})


@pytest.mark.parametrize("name", [name for name in COUNTS if name != "FORWARD_BATCH_SIZE"])  # at most 1000
def test_counts_too_large_for_the_database_or_a_date_stop_start_up_naming_the_setting(name):
    maximum = 36500 if name == "RETENTION_DAYS" else 2**31 - 1
    with pytest.raises(StartupError, match=f"^{name} must be at most {maximum}, not {maximum + 1}$"):
        load_config({name: str(maximum + 1)})
    load_config({name: str(maximum)})  # the largest is taken


@pytest.mark.parametrize("name", ["FORWARD_LINGER_MS", "DATABASE_STATEMENT_TIMEOUT_MS"])
@pytest.mark.parametrize("value", ["-1", "1s", "0.5"])
def test_whole_numbers_that_may_be_zero_stop_start_up_naming_the_setting(name, value):
    environ = {name: value, "DATABASE_URL": "postgresql://u@h/d"}
    with pytest.raises(StartupError, match=f"^{name} must be a whole number of at least 0, not '"):
        load_config(environ)


@pytest.mark.parametrize("name", ["SEND_RETRY_DELAY_SECONDS", "VENDOR_TIMEOUT_SECONDS", "PURGE_INTERVAL_SECONDS",
                                  "METRICS_CACHE_SECONDS"])
@pytest.mark.parametrize("value", ["-1", "5m", "nan", "inf", "1e20"])
def test_durations_that_are_not_seconds_stop_start_up_naming_the_setting(name, value):
    expected = f"^{name} must be a number of seconds, 0 or more, up to 31536000 \\(a year\\), not '"
    with pytest.raises(StartupError, match=expected):
        load_config({name: value})


def test_settings_in_range_are_read_as_numbers():
    config = load_config({"LEASE_SECONDS": " 90 ", "VENDOR_TIMEOUT_SECONDS": "2.5", "FORWARD_LINGER_MS": "0"})
    assert (config["LEASE_SECONDS"], config["VENDOR_TIMEOUT_SECONDS"], config["FORWARD_LINGER_MS"]) == (90, 2.5, 0)


@pytest.mark.parametrize("environ", [{"PRODUCTION": "true"}, {"VCAP_APPLICATION": "{}"},
                                     {"VCAP_APPLICATION": "{}", "VCAP_SERVICES": json.dumps(
                                         {"postgresql-db": [{"tags": ["postgresql"], "credentials": {"host": "h"}}]})}])
def test_production_without_a_database_stops_start_up_instead_of_using_a_local_file(environ):
    with pytest.raises(StartupError, match="^no database: set DATABASE_URL or bind a PostgreSQL service"):
        load_config(environ)


@pytest.mark.parametrize("vcap, fault", [('{"postgresql-db": [', "is not JSON"), ("[]", "must be a JSON object")])
def test_malformed_vcap_services_stops_start_up_naming_it(vcap, fault):
    with pytest.raises(StartupError, match=f"^VCAP_SERVICES {fault}"):
        load_config({"VCAP_SERVICES": vcap})


@pytest.mark.parametrize("services, fault", [
    ({"x": {"label": "postgresql"}}, "VCAP_SERVICES['x'] must be a list of service objects"),
    ({"postgresql-db": ["postgres://h/d"]}, "VCAP_SERVICES['postgresql-db'] must be a list of service objects"),
    ({"user-provided": [{"name": "cfg", "credentials": {}}, {"name": "db", "credentials": "postgres://h/d"}]},
     "VCAP_SERVICES['user-provided'][1]['credentials'] must be an object"),
])
@pytest.mark.parametrize("environ", [{}, {"CONFIG_SERVICE_NAME": "cfg"}])
def test_vcap_services_of_the_wrong_shape_stops_start_up_naming_the_entry(services, fault, environ):
    with pytest.raises(StartupError, match=f"^{re.escape(fault)}$"):
        load_config({"VCAP_SERVICES": json.dumps(services), **environ})


@pytest.mark.parametrize("value, expected", [(None, 10000), ("", 10000), (" 250 ", 250)])
def test_get_all_limit_defaults_to_ten_thousand(value, expected):
    environ = {} if value is None else {"STATUS_GET_ALL_LIMIT": value}
    assert load_config(environ)["STATUS_GET_ALL_LIMIT"] == expected


@requires_spec
def test_callback_token_url_defaults_to_the_one_the_callback_contract_names():
    spec = yaml.safe_load((SPEC_DIR / "partner-callbacks.yaml").read_text())
    flows = spec["components"]["securitySchemes"]["oAuthAuthorization"]["flows"]

    assert load_config({})["PARTNER_OAUTH_TOKEN_URL"] == flows["clientCredentials"]["tokenUrl"]
    assert load_config({"PARTNER_OAUTH_TOKEN_URL": ""})["PARTNER_OAUTH_TOKEN_URL"] is None


@pytest.mark.parametrize("name", ["EMARSYS_JWKS_URL", "EMARSYS_TOKEN_ISSUER", "EMARSYS_API_BASE_URL"])
def test_a_blank_emarsys_url_means_its_default(name):
    # Blank (an empty `cf set-env` or user-provided credential), the verifier could not be built.
    default = load_config({})[name]
    assert default.startswith("https://")
    assert load_config({name: "", "EMARSYS_OAUTH_CLIENT_ID": "c"})[name] == default
    assert load_config({name: "  "})[name] == default


@pytest.mark.parametrize("name", ["ADMIN_USERNAME", "SAP_STATUS_USERNAME"])
@pytest.mark.parametrize("value", ["ops:team", ":ops", "ops:"])
def test_a_basic_auth_user_name_with_a_colon_stops_start_up_naming_the_setting(name, value):
    # Basic credentials split at the first colon, so this user could never log in.
    with pytest.raises(StartupError, match=f"^{name} must not contain ':'"):
        load_config({name: value})


@pytest.mark.parametrize("given, missing", [
    ("SAP_STATUS_USERNAME", "SAP_STATUS_PASSWORD"), ("SAP_STATUS_PASSWORD", "SAP_STATUS_USERNAME"),
    ("ADMIN_USERNAME", "ADMIN_PASSWORD"), ("ADMIN_PASSWORD", "ADMIN_USERNAME"),
])
def test_half_a_basic_auth_pair_stops_start_up_instead_of_leaving_the_endpoint_open(given, missing):
    with pytest.raises(StartupError, match=f"^{given} is set but {missing} is not: set both, or neither$"):
        load_config({given: "s3cret-value"})


def test_a_whole_basic_auth_pair_or_none_starts():
    assert load_config({"ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": "pw"})["ADMIN_PASSWORD"] == "pw"
    assert load_config({})["SAP_STATUS_USERNAME"] is None


@pytest.mark.parametrize("environ, message", [
    ({"FORWARD_RETRY_SCHEDULE": "5x"}, "FORWARD_RETRY_SCHEDULE: invalid duration '5x'"),
    ({"FORWARD_MAX_AGE": "3days"}, "FORWARD_MAX_AGE: invalid duration '3days'"),
    # A bare number under an hour: "30" meant as days would dead-letter a report after 30 s.
    ({"FORWARD_MAX_AGE": "30"}, "FORWARD_MAX_AGE: invalid age '30': give a number with its unit, e.g. 30d"),
    ({"FORWARD_MAX_AGE": "3599"}, "FORWARD_MAX_AGE: invalid age '3599': give a number with its unit"),
    ({"FORWARD_MAX_AGE": "0d"}, "FORWARD_MAX_AGE: must be more than 0, e.g. 3d, not '0d'"),
    # Far longer, a retry's time would pass the year 9999 and end the worker's loop with an OverflowError.
    ({"FORWARD_MAX_AGE": "999999999d"}, "FORWARD_MAX_AGE: '999999999d' is longer than the most allowed, 365d"),
    ({"FORWARD_RETRY_SCHEDULE": "5s,999999999d"}, "FORWARD_RETRY_SCHEDULE: '999999999d' is longer than the most"),
    ({"FORWARD_BATCH_SIZE": "5000"}, "FORWARD_BATCH_SIZE must be at most 1000 (the most Emarsys takes in one"),
    ({"VENDOR_TIMEOUT_SECONDS": "0"}, "VENDOR_TIMEOUT_SECONDS must be more than 0 seconds"),
    ({"PUBLIC_BASE_URL": "sms-status.cfapps.eu10.hana.ondemand.com"}, "PUBLIC_BASE_URL must be an absolute"),
    ({"PUBLIC_BASE_URL": "ftp://sms.example.com"}, "PUBLIC_BASE_URL must be an absolute"),
])
def test_a_setting_the_worker_or_the_callbacks_could_not_use_stops_start_up(environ, message):
    # The web process would otherwise run on, accepting messages, while the worker refuses to start.
    with pytest.raises(StartupError, match=f"^{re.escape(message)}"):
        load_config(environ)


@pytest.mark.parametrize("environ, delays, max_age", [
    ({"FORWARD_RETRY_SCHEDULE": "5,60,300,1800"}, (5.0, 60.0, 300.0, 1800.0), 3 * 86400.0),
    ({"FORWARD_RETRY_SCHEDULE": "500ms, 2s,1m"}, (0.5, 2.0, 60.0), 3 * 86400.0),
    ({"FORWARD_MAX_AGE": "259200"}, (5.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0), 259200.0),
    ({"FORWARD_MAX_AGE": "12h"}, (5.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0), 43200.0),
])
def test_forward_settings_in_seconds_as_they_always_were_still_start(environ, delays, max_age):
    config = load_config({"DATABASE_URL": "sqlite://", **environ})
    policy = RetryPolicy.from_config(config["FORWARD_RETRY_SCHEDULE"], config["FORWARD_MAX_AGE"])
    assert (policy.delays, policy.max_age) == (delays, max_age)


def test_public_base_url_keeps_its_path_without_the_trailing_slash():
    assert load_config({"PUBLIC_BASE_URL": "https://sms.example.com/status/ "})["PUBLIC_BASE_URL"] == (
        "https://sms.example.com/status")


def test_a_colon_in_a_user_name_from_the_user_provided_service_stops_start_up_too():
    vcap = json.dumps({"user-provided": [{"name": "cfg", "credentials": {"ADMIN_USERNAME": "ops:team"}}]})
    with pytest.raises(StartupError, match="^ADMIN_USERNAME must not contain ':'"):
        load_config({"VCAP_SERVICES": vcap, "CONFIG_SERVICE_NAME": "cfg"})


@pytest.mark.parametrize("environ", [{"LEASE_SECONDS": "20", "VENDOR_TIMEOUT_SECONDS": "10"},
                                     {"VENDOR_TIMEOUT_SECONDS": "30"}])
def test_a_lease_a_send_could_outlive_stops_the_web_process_too(environ):
    with pytest.raises(StartupError, match="^LEASE_SECONDS must be longer than"):
        load_config(environ)
