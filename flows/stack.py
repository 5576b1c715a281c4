"""The lafs server stack, defined once: PostgreSQL databases, the MLflow and Prefect servers and a process worker.

``docker/compose.yaml`` runs these commands in containers; ``tests/stack`` runs the same commands on 127.0.0.1
without Docker, and ``tests/stack/test_stack_definition.py`` fails when the compose file drifts from this module.
Placeholders in braces (``{port}``) are the values that differ between the two: hosts, ports, passwords, paths.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

POSTGRES_SUPERUSER = "postgres"
POSTGRES_INIT_SQL = "docker/postgres-init.sql"  # relative to the repository root; run once on a new cluster
WORK_POOL = "lafs-process"


@dataclass(frozen=True)
class Database:
    """A PostgreSQL database, its owning role and the SQLAlchemy driver of the server that uses it."""

    name: str
    role: str
    driver: str
    password_env: str

    def url(self, host: str, port: int | str, password: str) -> str:
        """The server's connection URL (``driver://role:password@host:port/name``)."""
        return f"{self.driver}://{self.role}:{password}@{host}:{port}/{self.name}"


# MLflow's store names its driver: SQLAlchemy 2.1's default for a bare postgresql:// is psycopg 3, not psycopg2.
MLFLOW_DB = Database("mlflow", "mlflow", "postgresql+psycopg", "MLFLOW_DB_PASSWORD")
PREFECT_DB = Database("prefect", "prefect", "postgresql+asyncpg", "PREFECT_DB_PASSWORD")
DATABASES = (MLFLOW_DB, PREFECT_DB)


@dataclass(frozen=True)
class Service:
    """A long-running process of the stack: its command line and environment, with ``{placeholders}``."""

    command: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)

    def placeholders(self) -> set[str]:
        """Names of every ``{placeholder}`` in the command and the environment."""
        texts = [*self.command, *self.environment.values()]
        return {name for text in texts for _, name, _, _ in string.Formatter().parse(text) if name}

    def argv(self, **values: object) -> list[str]:
        """The command line with the placeholders filled in."""
        return [arg.format(**values) for arg in self.command]

    def env(self, **values: object) -> dict[str, str]:
        """The environment variables with the placeholders filled in."""
        return {key: value.format(**values) for key, value in self.environment.items()}


MLFLOW_SERVER = Service(
    command=(
        "mlflow",
        "server",
        "--host={host}",
        "--port={port}",
        "--workers=1",
        "--backend-store-uri={backend_store_uri}",
        "--artifacts-destination={artifacts_destination}",
        "--serve-artifacts",
        "--allowed-hosts={allowed_hosts}",
    ),
    # The server's background job runner is unused here and costs ~30 s of start-up.
    environment=MappingProxyType({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
)

PREFECT_SERVER = Service(
    command=("prefect", "server", "start", "--host", "{host}", "--port", "{port}"),
    environment=MappingProxyType(
        {
            "PREFECT_API_DATABASE_CONNECTION_URL": "{database_url}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": "{ui_api_url}",
        }
    ),
)

WORKER = Service(
    command=("prefect", "worker", "start", "--pool", "{pool}", "--type", "process"),
    environment=MappingProxyType(
        {
            "PREFECT_API_URL": "{prefect_api_url}",
            "MLFLOW_TRACKING_URI": "{mlflow_tracking_uri}",
            "LAFS_MLFLOW_UI_URL": "{mlflow_ui_url}",
            "LAFS_HOME": "{lafs_home}",
            "LAFS_SHARED": "{lafs_shared}",
        }
    ),
)

# Which docker/compose.yaml service runs which definition.
COMPOSE_SERVICES: Mapping[str, Service] = MappingProxyType(
    {"mlflow": MLFLOW_SERVER, "prefect-server": PREFECT_SERVER, "worker": WORKER, "worker-gpu": WORKER}
)
