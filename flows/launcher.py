"""The torchrun launcher task: one distributed job in its own process session, reaped as a whole.

Prefect does not reap the children of a task (prefect#20979, #17593), so the job is started with
``start_new_session=True`` and its environment is marked with a launch id. Every way out of the task
(success, failure, timeout, Prefect's cancellation SIGTERM arriving as ``TerminationSignal``, a crash) goes
through :func:`stop_job`: SIGTERM to the session's group and to every marked process (torchrun puts each
worker in a session of its own), SIGKILL to survivors after a grace period. Flows also call
:func:`stop_all_groups` from their ``on_cancellation``/``on_crashed`` hooks, for tasks run in worker threads.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows.params import LaunchParams

LAUNCH_ID_ENV = "LAFS_LAUNCH_ID"
_ACTIVE: dict[str, subprocess.Popen[str]] = {}
_ACTIVE_LOCK = threading.Lock()


class TorchrunError(RuntimeError):
    """The torchrun job exited non-zero, timed out or was stopped; the message ends with its last log lines."""

    def __init__(self, returncode: int | None, reason: str, tail: Sequence[str]) -> None:
        self.returncode = returncode
        lines = "\n".join(tail)
        super().__init__(f"torchrun {reason} (exit code {returncode}); last lines:\n{lines}")


class LaunchResult(BaseModel):
    """What the launcher returns: no tensors, just the facts of the run."""

    command: list[str]
    returncode: int
    duration_s: float
    log_file: str | None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def torchrun_command(launch: LaunchParams, entry: Sequence[str], *, no_python: bool = False) -> list[str]:
    """The torchrun command line for ``entry`` (``["-m", "pkg.mod", ...]``, ``["script.py", ...]`` or a program).

    With ``rdzv_endpoint`` the nodes meet through a c10d rendezvous (elastic, node ranks assigned by it);
    otherwise a static rendezvous on ``master_addr:master_port`` (port 0 picks a free local port, which only
    makes sense for one node).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += [f"--nnodes={launch.nnodes}", f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.rdzv_endpoint:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={launch.rdzv_id}"]
    else:
        if launch.master_port == 0 and launch.nnodes > 1:
            raise ValueError("a multi-node static rendezvous needs an explicit master_port")
        port = launch.master_port or free_port(launch.master_addr)
        cmd += [f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}", f"--master-port={port}"]
    cmd.append(f"--max-restarts={launch.max_restarts}")
    if no_python:
        cmd.append("--no-python")
    return cmd + list(entry)


def job_processes(launch_id: str) -> list[psutil.Process]:
    """Live (non-zombie) processes started by the launch ``launch_id``.

    torchrun starts every worker in a session of its own, so the launch's process group does not hold the
    workers; the launcher marks the job's environment with ``LAFS_LAUNCH_ID`` instead, which every
    descendant inherits, even after being re-parented when torchrun dies.
    """
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(LAUNCH_ID_ENV) == launch_id:
                members.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return members


def _signal_job(proc: subprocess.Popen[str], launch_id: str, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for member in job_processes(launch_id):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            member.send_signal(sig)


def stop_job(proc: subprocess.Popen[str], launch_id: str, grace_s: float) -> None:
    """SIGTERM every process of the launch (its session and all marked descendants), SIGKILL survivors."""
    _signal_job(proc, launch_id, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not job_processes(launch_id):
            break
        time.sleep(0.2)
    if proc.poll() is None or job_processes(launch_id):
        _signal_job(proc, launch_id, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with _ACTIVE_LOCK:
        _ACTIVE.pop(launch_id, None)


def stop_all_groups(*_: object, grace_s: float = 10.0) -> None:
    """Stop every job this process launched; usable directly as a flow state hook."""
    with _ACTIVE_LOCK:
        jobs = list(_ACTIVE.items())
    for launch_id, proc in jobs:
        stop_job(proc, launch_id, grace_s)


atexit.register(stop_all_groups)


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))
    lines.put(None)


def run_process_group(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    log_file: str | None = None,
    timeout_s: float | None = None,
    grace_s: float = 20.0,
) -> LaunchResult:
    """Run ``cmd`` in a new session, stream its lines to the Prefect log (and ``log_file``), reap its group.

    Raises :class:`TorchrunError` on a non-zero exit or a timeout. Any exception or signal raised while
    waiting (Prefect's cancellation arrives as ``TerminationSignal``) stops the group before propagating.
    """
    logger = get_run_logger()
    launch_id = uuid.uuid4().hex
    # A progress bar line every 30 s in the Prefect log, not one per step (tqdm reads TQDM_* as its defaults).
    defaults = {"COLUMNS": "160", "TQDM_MININTERVAL": "30"}
    full_env = {**defaults, **os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", LAUNCH_ID_ENV: launch_id}
    start = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    with _ACTIVE_LOCK:
        _ACTIVE[launch_id] = proc
    logger.info("started launch %s (pid %d): %s", launch_id, proc.pid, " ".join(cmd))
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    tail: deque[str] = deque(maxlen=40)
    sink = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
    try:
        eof = False
        while not eof:
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TorchrunError(None, f"timed out after {timeout_s:.0f} s", tail)
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                eof = proc.poll() is not None  # exited, yet a leftover child holds the pipe open
                continue
            if line is None:
                eof = True
                continue
            tail.append(line)
            logger.info(line)
            if sink:
                sink.write(line + "\n")
                sink.flush()
        returncode = proc.wait()
    except BaseException:
        logger.warning("stopping launch %s", launch_id)
        stop_job(proc, launch_id, grace_s)
        raise
    finally:
        if sink:
            sink.close()
    stop_job(proc, launch_id, grace_s=min(grace_s, 5.0))
    if returncode != 0:
        raise TorchrunError(returncode, "failed", tail)
    return LaunchResult(
        command=list(cmd), returncode=returncode, duration_s=time.monotonic() - start, log_file=log_file
    )


@task(name="torchrun", retries=0)
def torchrun_task(
    launch: LaunchParams,
    entry: list[str],
    env: dict[str, str] | None = None,
    log_file: str | None = None,
    no_python: bool = False,
) -> LaunchResult:
    """Launch ``entry`` under torchrun and wait for it (no retries: a failed training run needs a human)."""
    cmd = torchrun_command(launch, entry, no_python=no_python)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    return run_process_group(cmd, env=env, log_file=log_file, timeout_s=launch.timeout_s, grace_s=launch.grace_s)
