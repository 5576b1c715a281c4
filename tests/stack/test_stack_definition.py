"""docker/compose.yaml runs flows/stack.py's commands, wired to each other, with the drivers pyproject pins.

The stack tests run the definition itself; these checks fail when the compose file (which no machine here can
run) drifts from it: another flag, a renamed database, a worker pointed at a host the MLflow server refuses.
"""

from __future__ import annotations

import importlib.util
import re
import string
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import prefect
import pytest
import yaml

from flows.stack import (
    COMPOSE_SERVICES,
    DATABASES,
    MLFLOW_DB,
    MLFLOW_SERVER,
    POSTGRES_INIT_SQL,
    POSTGRES_SUPERUSER,
    PREFECT_DB,
    PREFECT_SERVER,
    WORK_POOL,
    WORKER,
    Service,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def pattern(template: str) -> re.Pattern[str]:
    """A regex that matches ``template`` with every ``{name}`` captured as a group of that name."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P<{name}>.+)")
    return re.compile("".join(parts))


def placeholder_values(service: Service, compose_service: dict) -> dict[str, str]:
    """The compose values of the definition's placeholders; fails on any other difference."""
    command = compose_service["command"]
    assert len(command) == len(service.command), (command, service.command)
    pairs = list(zip(service.command, command, strict=True))
    environment = compose_service.get("environment", {})
    missing = set(service.environment) - set(environment)
    assert not missing, f"environment lacks {sorted(missing)}"
    pairs += [(template, str(environment[key])) for key, template in service.environment.items()]
    values: dict[str, str] = {}
    for template, actual in pairs:
        found = pattern(template).fullmatch(actual)
        assert found, f"{actual!r} does not match the definition's {template!r}"
        for name, value in found.groupdict().items():
            assert values.setdefault(name, value) == value, f"{{{name}}} is both {values[name]!r} and {value!r}"
    return values


@pytest.mark.parametrize("name", sorted(COMPOSE_SERVICES))
def test_compose_service_runs_the_definition(name: str) -> None:
    service = COMPOSE_SERVICES[name]
    assert set(placeholder_values(service, SERVICES[name])) == service.placeholders()


def test_compose_wires_the_servers_to_their_databases_and_the_workers_to_the_servers() -> None:
    mlflow = placeholder_values(MLFLOW_SERVER, SERVICES["mlflow"])
    prefect_server = placeholder_values(PREFECT_SERVER, SERVICES["prefect-server"])
    postgres = SERVICES["postgres"]
    passwords = {db.name: postgres["environment"][db.password_env] for db in DATABASES}
    assert mlflow["backend_store_uri"] == MLFLOW_DB.url("postgres", 5432, passwords[MLFLOW_DB.name])
    assert prefect_server["database_url"] == PREFECT_DB.url("postgres", 5432, passwords[PREFECT_DB.name])
    for name in ("mlflow", "prefect-server"):
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert postgres["environment"]["POSTGRES_USER"] == POSTGRES_SUPERUSER
    init_mounts = [v for v in postgres["volumes"] if v.split(":")[1].startswith("/docker-entrypoint-initdb.d/")]
    assert [(REPO / "docker" / v.split(":")[0]).resolve() for v in init_mounts] == [REPO / POSTGRES_INIT_SQL]

    allowed = mlflow["allowed_hosts"].split(",")
    for name in ("worker", "worker-gpu"):
        worker = placeholder_values(WORKER, SERVICES[name])
        assert worker["prefect_api_url"] == f"http://prefect-server:{prefect_server['port']}/api", name
        assert worker["mlflow_tracking_uri"] == f"http://mlflow:{mlflow['port']}", name
        for url in (worker["mlflow_tracking_uri"], worker["mlflow_ui_url"]):
            assert urlsplit(url).netloc in allowed, f"{name}: the MLflow server refuses Host {urlsplit(url).netloc}"
    assert placeholder_values(WORKER, SERVICES["worker"])["pool"] == WORK_POOL
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {WORK_POOL}
    assert SERVICES["prefect-server"]["image"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"


def test_init_sql_creates_every_database_with_its_role_and_password() -> None:
    sql = (REPO / POSTGRES_INIT_SQL).read_text()
    for db in DATABASES:
        variable = re.search(rf"^\\getenv (\w+) {db.password_env}$", sql, re.M)
        assert variable, db.password_env
        assert f"CREATE ROLE {db.role} LOGIN PASSWORD :'{variable[1]}';" in sql
        assert f"CREATE DATABASE {db.name} OWNER {db.role};" in sql


def test_server_drivers_are_pinned_installed_and_in_the_server_image() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["servers"]
    pins = dict(re.fullmatch(r"([\w-]+)(?:\[\w+\])?==(\S+)", req).groups() for req in extra)
    constraints = (REPO / "docker" / "constraints.txt").read_text().splitlines()
    for package, version in pins.items():
        assert f"{package}=={version}" in constraints, package
    for db in DATABASES:
        driver = db.driver.partition("+")[2]
        assert driver in pins, f"{db.name}: driver {driver} is not in the servers extra"
        assert importlib.util.find_spec(driver), f"{driver} is not installed (pip install -e '.[servers]')"
    assert '".[servers]"' in (REPO / "docker" / "Dockerfile.cpu").read_text()
