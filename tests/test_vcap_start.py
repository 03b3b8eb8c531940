"""Start the service as Cloud Foundry would: the manifest's commands, only VCAP_SERVICES for the database."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from cli import MIGRATION_LOCK_KEY, MIGRATIONS_DIR
from config import database_url_from_vcap
from tests.pg import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CONFIG_SERVICE = "sms-status-config"
PULL_USER, PULL_PASSWORD = "sap-comm-user", "pull-S3cret-pw!"
ADMIN_USER, ADMIN_PASSWORD = "operator", "admin-S3cret-pw!"
PUSH_ROUTE = "/api/v1/notifications/set"
PUSHES = 5
PHONE = "+49123456789"
ACCESS_LINE = re.compile(r'\S+ "(GET|POST|PUT|DELETE|HEAD) (\S+)" \d{3} \S+ \d+ms \S+')
STARTUP_DEADLINE_SECONDS = 60


@pytest.fixture(scope="module")
def manifest() -> dict:
    """Return the manifest's one application."""
    [application] = yaml.safe_load((REPO / "manifest.yml").read_text())["applications"]
    return application


@pytest.fixture
def fresh_database(postgres) -> Iterator[str]:
    """Create an empty database (no schema yet) and drop it after the test."""
    name = f"sms_status_cf_{uuid.uuid4().hex[:8]}"
    engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield name
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    engine.dispose()


def postgres_credentials(postgres, database: str, style: str) -> dict:
    """Return a bound PostgreSQL's credentials: a `uri`, or only the parts (the test cluster trusts any password)."""
    if style == "uri":
        return {"uri": f"postgres://test:unused@127.0.0.1:{postgres.port}/{database}"}
    return {"hostname": "127.0.0.1", "port": str(postgres.port), "dbname": database, "username": "test",
            "password": "p@ss:w/rd?"}


def vcap_services(postgres, database: str, style: str) -> dict:
    """Return VCAP_SERVICES with the database and the user-provided service carrying the secrets."""
    database_service = {"name": "sms-status-db", "tags": ["postgresql", "relational"],
                        "credentials": postgres_credentials(postgres, database, style)}
    config_service = {"name": CONFIG_SERVICE, "label": "user-provided", "tags": [],
                      "credentials": {"SAP_STATUS_USERNAME": PULL_USER, "SAP_STATUS_PASSWORD": PULL_PASSWORD,
                                      "ADMIN_USERNAME": ADMIN_USER, "ADMIN_PASSWORD": ADMIN_PASSWORD,
                                      "CONFIG_ENCRYPTION_KEY": Fernet.generate_key().decode()}}
    if style == "uri":
        return {"postgresql-db": [{**database_service, "label": "postgresql-db"}],
                "user-provided": [config_service]}
    # A customer's own database, bound as a user-provided service recognised by its tag.
    return {"user-provided": [{**database_service, "label": "user-provided"}, config_service]}


def cf_environment(manifest: dict, vcap: dict, port: int, tmp_path: Path) -> dict[str, str]:
    """Return what a container sees: the manifest's env, the platform's variables, no DATABASE_URL."""
    env = {key: value for key, value in manifest["env"].items()}
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    env.update({"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LANG": "C.UTF-8",
                "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "PORT": str(port), "WEB_CONCURRENCY": "2",
                "VCAP_SERVICES": json.dumps(vcap), "PYTHONUNBUFFERED": "1",
                "VCAP_APPLICATION": json.dumps({"application_name": "sms-status"})})
    assert "DATABASE_URL" not in env
    return env


def process_command(manifest: dict, kind: str) -> str:
    """Return the start command of one of the manifest's processes."""
    return next(process["command"] for process in manifest["processes"] if process["type"] == kind)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], subprocess.Popen]]:
    """Return a starter of shell commands in the repository; each is stopped after the test."""
    started: list[subprocess.Popen] = []

    def run(command: str, env: dict[str, str]) -> subprocess.Popen:
        name = f"process-{len(started)}"
        process = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, start_new_session=True,
                                   stdout=(tmp_path / f"{name}.out").open("wb"),
                                   stderr=(tmp_path / f"{name}.err").open("wb"))
        process.name = name
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def wait_until_ready(process: subprocess.Popen, base_url: str, tmp_path: Path) -> requests.Response:
    """Poll /ready until the server answers 200; fail with its stderr if it exits first."""
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited {process.returncode}: {(tmp_path / f'{process.name}.err').read_text()}")
        try:
            response = requests.get(f"{base_url}/ready", timeout=5)
            if response.status_code == 200:
                return response
        except (requests.ConnectionError, requests.Timeout):
            pass  # still booting: the port may accept before a worker has loaded the app
        time.sleep(0.1)
    pytest.fail(f"no 200 from /ready: {(tmp_path / f'{process.name}.err').read_text()}")


def stop(process: subprocess.Popen) -> None:
    """Stop a started server gracefully, as Cloud Foundry does (SIGTERM)."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def basic(user: str, password: str) -> dict[str, str]:
    """Return a Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request_count(metrics_text: str, route: str) -> float:
    """Add up the request-latency histogram's counts of one route, over every gunicorn worker."""
    return sum(sample.value for family in text_string_to_metric_families(metrics_text) if family.type == "histogram"
               for sample in family.samples if sample.name.endswith("_count") and route in sample.labels.values())


def head_revision() -> str:
    """Return the newest migration's revision."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def schema_revision(postgres, database: str) -> str | None:
    """Return the database's migration revision, or None before the first migration."""
    engine = create_engine(postgres.database_url(database))
    try:
        with engine.connect() as connection:
            if connection.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("style", ["uri", "parts"])
def test_processes_start_from_vcap_services_and_serve_push_and_pull(
        postgres, fresh_database, manifest, start, tmp_path, style):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = cf_environment(manifest, vcap_services(postgres, fresh_database, style), port, tmp_path)
    # Both processes start at once, as on `cf push`, and race for the migration lock.
    server = start(process_command(manifest, "web"), env)
    worker = start(process_command(manifest, "worker") + " --once", env)
    assert wait_until_ready(server, base_url, tmp_path).json()["status"] == "ready"
    assert worker.wait(timeout=120) == 0, (tmp_path / f"{worker.name}.err").read_text()
    assert "worker job failed" not in (tmp_path / f"{worker.name}.out").read_text()
    assert schema_revision(postgres, fresh_database) == head_revision()

    for index in range(1, PUSHES + 1):
        push = requests.get(f"{base_url}{PUSH_ROUTE}", timeout=10, headers={"X-Vcap-Request-Id": f"cf-req-{index}"},
                            params={"orderID": "cf-1", "date": "01012018", "time": f"09275{index}", "msisdn": PHONE,
                                    "status": "'0x4503 failed'"})
        assert push.status_code == 200
    refused = requests.get(f"{base_url}{PUSH_ROUTE}", timeout=10, headers={"X-Vcap-Request-Id": "cf-req-refused"},
                           params={"date": "01012018", "time": "092750", "status": "delivered"})
    assert refused.status_code == 400
    window = {"startTimeUTC": "20180101000000", "endTimeUTC": "20180102000000", "page": "0", "sourceSystem": "CF"}
    assert requests.get(f"{base_url}/status", params=window, timeout=10).status_code == 401
    pulled = requests.get(f"{base_url}/status", params=window, timeout=10, headers=basic(PULL_USER, PULL_PASSWORD))
    assert pulled.status_code == 200
    assert [record["messageId"] for record in pulled.json()["status"]] == ["cf-1"]
    scrape = requests.get(f"{base_url}/metrics", timeout=10, headers=basic(ADMIN_USER, ADMIN_PASSWORD))
    assert scrape.status_code == 200
    # Two gunicorn workers served the pushes: the manifest's PROMETHEUS_MULTIPROC_DIR adds them up.
    assert request_count(scrape.text, PUSH_ROUTE) == PUSHES + 1  # and the refused one
    stop(server)

    stdout = (tmp_path / f"{server.name}.out").read_text()
    everything = stdout + (tmp_path / f"{server.name}.err").read_text()
    assert PHONE.lstrip("+") not in everything and PULL_PASSWORD not in everything
    app_lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    access_lines = [line for line in stdout.splitlines() if not line.startswith("{")]
    assert all(ACCESS_LINE.fullmatch(line) for line in access_lines), access_lines
    # A stored receipt is quiet in the app log (DEBUG) but in the access log; a refused one is in both.
    assert [line for line in app_lines if line.get("request_id") == "cf-req-1"] == []
    assert any(f'"GET {PUSH_ROUTE}"' in line and line.endswith(" cf-req-1") for line in access_lines)
    [refused_line] = [line for line in app_lines if line.get("request_id") == "cf-req-refused"]
    assert (refused_line["level"], refused_line["route"], refused_line["status"]) == ("INFO", PUSH_ROUTE, 400)


def lock_askers(engine, database: str) -> int:
    """Count the other sessions of `database` whose last statement asked for the migration advisory lock."""
    # They ask again and again (pg_try_advisory_lock), so between two asks none of them waits in pg_locks.
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :database AND pid <> pg_backend_pid() "
                 "AND query LIKE '%pg_try_advisory_lock%'")
    with engine.connect() as connection:
        return connection.execute(query, {"database": database}).scalar()


def test_instances_starting_together_take_turns_to_migrate(postgres, fresh_database, manifest, start, tmp_path):
    env = cf_environment(manifest, vcap_services(postgres, fresh_database, "uri"), free_port(), tmp_path)
    engine = create_engine(postgres.database_url(fresh_database), isolation_level="AUTOCOMMIT")
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        instances = [start("flask --app app db-upgrade-locked", env) for _ in range(2)]
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while lock_askers(engine, fresh_database) < 2 and time.monotonic() < deadline:
            assert all(instance.poll() is None for instance in instances)
            time.sleep(0.05)
        assert lock_askers(engine, fresh_database) == 2
        assert schema_revision(postgres, fresh_database) is None  # nobody migrates without the lock
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
    engine.dispose()
    for instance in instances:
        assert instance.wait(timeout=120) == 0, (tmp_path / f"{instance.name}.err").read_text()
    assert schema_revision(postgres, fresh_database) == head_revision()


@pytest.mark.parametrize("credentials, expected", [
    ({"host": "db.internal", "port": 5432, "database": "sms", "user": "u", "password": "p/w@x"},
     "postgresql://u:p%2Fw%40x@db.internal:5432/sms"),
    ({"hostname": "db.internal", "port": "6432", "name": "sms", "username": "u", "password": "pw"},
     "postgresql://u:pw@db.internal:6432/sms"),
    ({"hostname": "db.internal", "port": 5432, "dbname": "sms", "username": "u"}, None),
])
def test_tagged_postgresql_credentials_without_uri_become_the_database_url(credentials, expected):
    services = {"user-provided": [{"name": "customer-db", "tags": ["postgresql"], "credentials": credentials}]}
    assert database_url_from_vcap(json.dumps(services)) == expected


def first_step(manifest: dict) -> str:
    """Return the worker process's first step: the locked migration."""
    return process_command(manifest, "worker").split("&&")[0].strip()


@pytest.mark.parametrize("setting, last_line", [
    ({}, 'Error: database unreachable: connection to server at "127.0.0.1", port {port} failed: Connection refused'),
    ({"LEASE_SECONDS": "1m"}, "Error: LEASE_SECONDS must be a whole number of at least 1, not '1m'"),
])
def test_a_start_that_cannot_go_on_says_why_in_one_line(manifest, start, tmp_path, setting, last_line):
    closed_port = free_port()
    vcap = {"postgresql-db": [{"name": "sms-status-db", "label": "postgresql-db", "tags": ["postgresql"],
                               "credentials": {"uri": f"postgres://test:db-S3cret@127.0.0.1:{closed_port}/d"}}]}
    step = start(first_step(manifest), {**cf_environment(manifest, vcap, free_port(), tmp_path), **setting})
    assert step.wait(timeout=60) != 0
    errors = (tmp_path / f"{step.name}.err").read_text()
    assert errors.strip().splitlines()[-1] == last_line.format(port=closed_port)
    assert "Traceback" not in errors and "db-S3cret" not in errors
