"""manifest.yml and runtime.txt: what `cf push` deploys, checked point by point."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from gunicorn.config import Config as GunicornConfig

from app import create_app

REPO = Path(__file__).resolve().parents[1]
MIGRATE = "flask --app app db-upgrade-locked"
SECRET_SETTINGS = {"SAP_STATUS_USERNAME", "SAP_STATUS_PASSWORD", "ADMIN_USERNAME", "ADMIN_PASSWORD",
                   "CONFIG_ENCRYPTION_KEY", "PARTNER_OAUTH_CLIENT_SECRET", "TWILIO_AUTH_TOKEN", "DATABASE_URL"}
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
SIZE = re.compile(r"(\d+)([MG])")


@pytest.fixture(scope="module")
def application() -> dict:
    """Return the manifest's one application."""
    manifest = yaml.safe_load((REPO / "manifest.yml").read_text())
    [app] = manifest["applications"]
    return app


@pytest.fixture(scope="module")
def processes(application) -> dict[str, dict]:
    """Return the manifest's processes by type."""
    return {process["type"]: process for process in application["processes"]}


def megabytes(size: str) -> int:
    """Return a Cloud Foundry size such as 512M or 1G in megabytes."""
    number, unit = SIZE.fullmatch(size).groups()
    return int(number) * (1024 if unit == "G" else 1)


def gunicorn_settings(command: str, environ: dict[str, str]):
    """Let bash expand the web command's gunicorn part, then parse it with gunicorn's own parser."""
    gunicorn_part = command.split("&&")[-1].strip().removeprefix("exec ")
    expanded = subprocess.run(["bash", "-c", f'set -- {gunicorn_part}; printf "%s\\0" "$@"'],
                              env={"PATH": "/usr/bin:/bin", **environ}, capture_output=True, text=True,
                              check=True).stdout.split("\0")[:-1]
    assert expanded[0] == "gunicorn"
    return GunicornConfig().parser().parse_args(expanded[1:])


def test_python_buildpack(application):
    assert application["buildpacks"] == ["python_buildpack"]


def test_runtime_pins_a_python_3_minor_version():
    pinned = (REPO / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-3\.(\d+)\.(x|\d+)", pinned)
    assert match and int(match.group(1)) >= 11


@pytest.mark.parametrize("environ, workers, threads", [
    ({"PORT": "8123"}, 4, 1),
    ({"PORT": "8123", "WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "8"}, 3, 8),
])
def test_web_runs_gunicorn_on_port_with_workers_and_threads_from_the_environment(processes, environ, workers,
                                                                                    threads):
    settings = gunicorn_settings(processes["web"]["command"], environ)
    assert settings.args == ["wsgi:app"]
    assert settings.bind == ["0.0.0.0:8123"]
    assert (settings.workers, settings.threads) == (workers, threads)


def test_web_access_log_goes_to_stdout_without_query_strings_or_raw_paths(processes):
    settings = gunicorn_settings(processes["web"]["command"], {"PORT": "8080"})
    assert settings.accesslog == "-"
    assert settings.access_log_format is None  # gunicorn.conf.py's, shared with every other start
    shared = {}
    exec((REPO / "gunicorn.conf.py").read_text(), shared)
    # %(r)s and %(U)s carry callback tokens; %(q)s and %(r)s carry phone numbers and texts.
    assert not re.search(r"%\((r|U|q)\)s", shared["access_log_format"])
    assert "%({sms_status.route}e)s" in shared["access_log_format"]


def test_web_has_an_http_health_check_on_the_health_endpoint(processes):
    web = processes["web"]
    assert (web["health-check-type"], web["health-check-http-endpoint"]) == ("http", "/health")
    rules = {rule.rule for rule in create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"}).url_map.iter_rules()}
    assert web["health-check-http-endpoint"] in rules


def test_worker_runs_the_worker_with_a_process_health_check_and_no_route(application, processes):
    worker = processes["worker"]
    assert worker["command"].split("&&")[-1].split() == ["exec", "flask", "--app", "app", "worker"]
    assert worker["health-check-type"] == "process"
    assert not {"routes", "route", "health-check-http-endpoint"} & set(worker)
    # Routes of an application map to its web process only; none names another process.
    assert all("process" not in route for route in application.get("routes", []))


@pytest.mark.parametrize("kind", ["web", "worker"])
def test_every_process_has_memory_and_disk_quotas(processes, kind):
    process = processes[kind]
    assert 256 <= megabytes(process["memory"]) <= 4096
    assert 512 <= megabytes(process["disk_quota"]) <= 4096


@pytest.mark.parametrize("kind", ["web", "worker"])
def test_every_process_migrates_under_the_advisory_lock_before_it_starts(processes, kind):
    steps = [shlex.split(step) for step in processes[kind]["command"].split("&&")]
    assert steps[-2] == shlex.split(MIGRATE)  # the step right before the process itself
    assert processes[kind].get("timeout", 60) >= 120  # time to wait for another instance's migration


def test_the_postgresql_service_and_the_config_service_are_bound(application):
    assert "sms-status-db" in application["services"]
    assert application["env"]["CONFIG_SERVICE_NAME"] in application["services"]


def test_env_holds_no_secrets(application):
    env = application["env"]
    assert not SECRET_SETTINGS & set(env)
    assert not [name for name in env if SECRET_WORDS.search(name)]
    assert all(isinstance(value, str) for value in env.values())  # CF takes strings; YAML would coerce


def test_env_settings_are_ones_the_service_reads(application):
    config_source = (REPO / "config.py").read_text()
    for name in application["env"]:
        assert f'"{name}"' in config_source, name


def test_public_base_url_is_a_push_variable(application):
    assert application["env"]["PUBLIC_BASE_URL"] == "((public-base-url))"


def readme_section(title: str) -> str:
    """Return one `## ` section of the README, up to the next one."""
    readme = (REPO / "README.md").read_text()
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_tells_the_operator_to_create_every_bound_service(application):
    deploy = readme_section("Deploy to Cloud Foundry")
    created = (set(re.findall(r"cf create-service \S+ \S+ (\S+)", deploy))
               | set(re.findall(r"cf create-user-provided-service (\S+)", deploy)))
    assert created == set(application["services"])


@pytest.mark.parametrize("step", ["cf create-service", "cf create-user-provided-service", "cf set-env",
                                  "cf push", "cf run-task", "db-upgrade-locked", "advisory lock", "SAP_COM_0258",
                                  "Emarsys", "partner onboarding", "*Vendors*"])
def test_the_readme_deploy_section_walks_through_every_step(step):
    assert step in readme_section("Deploy to Cloud Foundry")
