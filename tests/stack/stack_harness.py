"""The lafs stack on 127.0.0.1 without Docker: PostgreSQL, MLflow and Prefect servers on it, a process worker.

Commands and environments come from ``flows/stack.py``, the definition ``docker/compose.yaml`` follows. Every
process started here carries ``LAFS_STACK_MARK`` in its environment (inherited by every descendant, even
re-parented ones); on the way out the worker stops before the servers, and leaving any marked process running
is an error.

PostgreSQL refuses to run as root: as root its binaries run as the ``postgres`` user of Debian's package through
``setpriv``, which execs, so the started pid is the postmaster. Its data directory is made outside pytest's
temporary tree (which only root may enter) and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flows.stack import (
    DATABASES,
    MLFLOW_DB,
    MLFLOW_SERVER,
    POSTGRES_INIT_SQL,
    POSTGRES_SUPERUSER,
    PREFECT_DB,
    PREFECT_SERVER,
    WORK_POOL,
    WORKER,
    Database,
)
from lafs_core.env import offline_environment

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MARK_ENV = "LAFS_STACK_MARK"
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def program(name: str) -> str:
    """A console script of this environment (``mlflow``, ``prefect``, ``lafs``), even when the venv is not active."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not installed in this environment"
    return found


def local_argv(argv: list[str]) -> list[str]:
    """A command line whose program is this environment's console script of that name."""
    return [program(argv[0]), *argv[1:]]


def pg_bindir() -> Path:
    """The PostgreSQL server binaries: Debian's newest ``/usr/lib/postgresql/N/bin``, else ``initdb`` on PATH."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: tuple(int(part) for part in p.parts[-3].split(".")),
        reverse=True,
    )
    found = debian[0] if debian else shutil.which("initdb")
    if not found:
        pytest.fail("PostgreSQL server binaries not found: run `make postgres` (Debian's postgresql package)")
    return Path(found).resolve().parent


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries this stack's mark."""
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            if proc.environ().get(MARK_ENV) == mark:
                found.append(proc)
    return found


def base_env(home: Path, mark: str) -> dict[str, str]:
    """This environment without Prefect/MLflow/lafs settings, plus the offline settings of ``home`` and the mark.

    Creates ``home``'s Prefect folder, where the Prefect processes keep their settings and results.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "LAFS_"))}
    env.update(offline_environment(home))
    env[MARK_ENV] = mark
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return env


def wait_until(ready: Callable[[], bool], what: str, proc: Process, timeout: float = START_TIMEOUT_S) -> float:
    """Poll ``ready()`` until true; returns the seconds it took. Fails early when ``proc`` exits."""
    start = time.monotonic()
    while not ready():
        if not proc.alive():
            pytest.fail(f"{what}: {proc.name} exited with {proc.popen.returncode}\n{proc.log_tail()}")
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not ready after {timeout:.0f} s\n{proc.log_tail()}")
        time.sleep(0.25)
    return time.monotonic() - start


def http_ok(url: str, accept: str = "*/*") -> bool:
    """True when ``url`` answers 200 (``accept="text/html"`` asks as a browser does, for UI pages)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass
class Process:
    """A long-running command in a session of its own, its output in ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    stop_signal: signal.Signals = signal.SIGTERM
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        """Start the command (appending to its log)."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        """Whether the started process still runs."""
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the process's output, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self, grace_s: float = 30.0) -> None:
        """Send the stop signal to the session, then SIGKILL whatever of it and its descendants survives."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            family = [psutil.Process(self.popen.pid), *psutil.Process(self.popen.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, self.stop_signal)
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@dataclass
class Postgres:
    """A PostgreSQL cluster on 127.0.0.1 with the stack's roles and databases (password by database name)."""

    port: int
    passwords: dict[str, str]

    def url(self, database: Database) -> str:
        """The connection URL of ``database`` for its owning role."""
        return database.url(HOST, self.port, self.passwords[database.name])


@dataclass
class Stack:
    """The running stack: where its servers answer and keep their files, and its processes."""

    root: Path
    mark: str
    postgres: Postgres
    mlflow: Process
    mlflow_url: str
    artifacts_root: Path
    prefect_url: str
    worker: Process
    lafs_shared: Path

    @property
    def prefect_api_url(self) -> str:
        """The Prefect API (the UI is served at :attr:`prefect_url`)."""
        return f"{self.prefect_url}/api"

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment of a client process (the CLI, ``lafs``) that talks to this stack's servers."""
        env = base_env(home, self.mark)
        env.update(PREFECT_API_URL=self.prefect_api_url, MLFLOW_TRACKING_URI=self.mlflow_url)
        return env

    def prefect_cli(self, *args: str, cwd: Path = REPO, **extra_env: str) -> str:
        """Run ``prefect --no-prompt ARGS`` against the stack; returns its output, fails with it on error."""
        env = {**self.client_env(self.root / "cli-home"), **extra_env}
        done = subprocess.run(
            [program("prefect"), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def restart_mlflow(self) -> float:
        """Stop the MLflow server (SIGTERM: in-flight requests finish) and start it again on the same port."""
        start = time.monotonic()
        self.mlflow.stop()
        self.mlflow.start()
        wait_until(lambda: http_ok(f"{self.mlflow_url}/health"), "mlflow after restart", self.mlflow)
        return time.monotonic() - start


def start_postgres(root: Path, mark: str, cleanup: ExitStack) -> Postgres:
    """initdb a new cluster, start it on a free port of 127.0.0.1, create the stack's roles and databases."""
    bindir = pg_bindir()
    pgdir = Path(tempfile.mkdtemp(prefix="lafs-stack-pg-"))
    cleanup.callback(shutil.rmtree, pgdir, ignore_errors=True)
    password = secrets.token_hex(16)
    pwfile = pgdir / "superuser-password"
    pwfile.write_text(password)
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("as root, PostgreSQL runs as the `postgres` user of Debian's package: run `make postgres`")
        for path in (pgdir, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups", "--"]
    env = base_env(pgdir, mark)
    data = pgdir / "data"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", POSTGRES_SUPERUSER, f"--pwfile={pwfile}"]
    initdb += ["--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"]
    done = subprocess.run([*as_user, *initdb], cwd=pgdir, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"initdb failed:\n{done.stdout}\n{done.stderr}"

    port = free_port()
    server = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", f"listen_addresses={HOST}"]
    server += ["-c", f"unix_socket_directories={data}"]
    # SIGINT is PostgreSQL's fast shutdown: the postmaster ends its backends (each in a session of its own).
    process = Process("postgres", [*as_user, *server], env, pgdir, root / "postgres.log", signal.SIGINT).start()
    cleanup.callback(process.stop)
    psql = [str(bindir / "psql"), "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(port), "-U", POSTGRES_SUPERUSER]
    client = {**env, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "2"}

    def accepts() -> bool:
        probe = subprocess.run([*psql, "-d", "postgres", "-c", "SELECT 1"], env=client, capture_output=True)
        return probe.returncode == 0

    wait_until(accepts, "postgres", process)
    passwords = {db.name: secrets.token_hex(12) for db in DATABASES}
    init_env = {**client, **{db.password_env: passwords[db.name] for db in DATABASES}}
    done = subprocess.run(
        [*psql, "-d", "postgres", "-f", str(REPO / POSTGRES_INIT_SQL)], env=init_env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{POSTGRES_INIT_SQL} failed:\n{done.stdout}\n{done.stderr}"
    return Postgres(port, passwords)


@contextmanager
def running_stack(root: Path, lafs_shared: Path) -> Iterator[Stack]:
    """PostgreSQL, the MLflow and Prefect servers on it, the `lafs-process` pool and a worker; all stopped after.

    ``root`` holds the logs and every server's files (except PostgreSQL's data directory, see the module doc);
    ``lafs_shared`` is the folder holding ``datasets/``, for the worker.
    """
    mark = uuid.uuid4().hex
    with ExitStack() as cleanup:
        cleanup.callback(_no_process_left, mark)  # registered first, so it runs after every stop
        startup: dict[str, float] = {}
        start = time.monotonic()
        postgres = start_postgres(root, mark, cleanup)
        startup["postgres"] = time.monotonic() - start

        mlflow_port, prefect_port = free_port(), free_port()
        mlflow_url, prefect_url = f"http://{HOST}:{mlflow_port}", f"http://{HOST}:{prefect_port}"
        artifacts_root = root / "mlartifacts"
        mlflow_values = {
            "host": HOST,
            "port": mlflow_port,
            "backend_store_uri": postgres.url(MLFLOW_DB),
            "artifacts_destination": artifacts_root,
            "allowed_hosts": f"{HOST}:{mlflow_port}",
        }
        mlflow_env = {**base_env(root / "mlflow-home", mark), **MLFLOW_SERVER.env()}
        mlflow_argv = local_argv(MLFLOW_SERVER.argv(**mlflow_values))
        prefect_env = base_env(root / "prefect-home", mark)
        prefect_env |= PREFECT_SERVER.env(database_url=postgres.url(PREFECT_DB), ui_api_url=f"{prefect_url}/api")
        prefect_argv = local_argv(PREFECT_SERVER.argv(host=HOST, port=prefect_port))
        start = time.monotonic()  # both servers start at once; each time is from here
        mlflow = Process("mlflow", mlflow_argv, mlflow_env, root / "mlflow", root / "mlflow.log").start()
        cleanup.callback(mlflow.stop)
        prefect = Process("prefect-server", prefect_argv, prefect_env, root / "prefect", root / "prefect.log").start()
        cleanup.callback(prefect.stop)
        startup["mlflow"] = wait_until(lambda: http_ok(f"{mlflow_url}/health"), "mlflow", mlflow)
        wait_until(lambda: http_ok(f"{prefect_url}/api/health"), "prefect", prefect)
        startup["prefect"] = time.monotonic() - start

        home = root / "worker-home"
        worker_env = base_env(home, mark)
        worker_env |= WORKER.env(
            prefect_api_url=f"{prefect_url}/api",
            mlflow_tracking_uri=mlflow_url,
            mlflow_ui_url=mlflow_url,
            lafs_home=home,
            lafs_shared=lafs_shared,
        )
        worker_env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # poll for flow runs every 2 s instead of 10 s
        worker = Process(
            "worker", local_argv(WORKER.argv(pool=WORK_POOL)), worker_env, root / "worker", root / "worker.log"
        )
        running = Stack(
            root=root,
            mark=mark,
            postgres=postgres,
            mlflow=mlflow,
            mlflow_url=mlflow_url,
            artifacts_root=artifacts_root,
            prefect_url=prefect_url,
            worker=worker,
            lafs_shared=lafs_shared,
        )
        running.prefect_cli("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        worker.start()
        cleanup.callback(worker.stop)  # registered last: the worker stops before its servers
        print("stack start-up (s): " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))
        yield running


def _no_process_left(mark: str) -> None:
    """After every stop: nothing this stack started may still run (survivors are killed, then reported)."""
    deadline = time.monotonic() + 10
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    described = []
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
            proc.kill()
    assert not described, "processes left behind by the stack:\n" + "\n".join(described)
