"""Configuration read from the environment."""
from __future__ import annotations

import json

import pytest
import yaml

from config import database_url_from_vcap, load_config, normalise_database_url
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
])
def test_bound_postgresql_service_is_found_in_vcap_services(services, expected):
    assert database_url_from_vcap(json.dumps(services)) == expected


def test_database_url_wins_over_vcap_services():
    vcap = json.dumps({"postgresql-db": [{"tags": ["postgresql"], "credentials": {"uri": "postgres://vcap/d"}}]})
    config = load_config({"DATABASE_URL": "postgres://env/d", "VCAP_SERVICES": vcap})
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://env/d"


def test_defaults():
    config = load_config({})
    assert (config["STATUS_PAGE_SIZE"], config["ENABLE_CLEAR_ENDPOINT"]) == (100, False)


def test_production_start_without_pull_credentials_logs_a_loud_warning(caplog):
    from app import create_app
    caplog.set_level("WARNING")
    create_app({"PRODUCTION": True, "SAP_STATUS_USERNAME": None, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert any("SAP_STATUS_USERNAME" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("name", ["STATUS_PAGE_SIZE", "STATUS_GET_ALL_LIMIT", "RETENTION_DAYS", "PURGE_BATCH_SIZE",
                                  "PURGE_MAX_BATCHES"])
@pytest.mark.parametrize("value", ["0", "-5", "ten", "1.5", "²"])
def test_record_counts_below_one_or_not_whole_stop_start_up_naming_the_setting(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be a whole number of at least 1"):
        load_config({name: value})


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
