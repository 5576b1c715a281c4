"""The torchrun launcher: command lines, exit codes as task states, and no process left after a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling
from pydantic import ValidationError

from flows.launcher import LAUNCH_ID_ENV, TorchrunError, job_processes, torchrun_command, torchrun_task
from flows.params import LaunchParams

JOBS = Path(__file__).with_name("jobs")
JOB = str(JOBS / "dist_job.py")
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_deployment(name: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                assert server.poll() is None, "the serving process died"
                assert time.monotonic() < deadline, "the flow was not served in time"
                time.sleep(1)


def _option(cmd: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in cmd if arg.startswith(f"--{name}=")]
    assert len(values) == 1, cmd
    return values[0]


def test_single_node_command_uses_a_static_local_master() -> None:
    cmd = torchrun_command(LaunchParams(nproc_per_node=2), ["-m", "lafs_core.train.pretrain", "a=1"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert _option(cmd, "nnodes") == "1"
    assert _option(cmd, "nproc-per-node") == "2"
    assert _option(cmd, "master-addr") == "127.0.0.1"
    assert 0 < int(_option(cmd, "master-port")) < 65536
    assert not any(arg.startswith("--rdzv") for arg in cmd)
    assert cmd[-3:] == ["-m", "lafs_core.train.pretrain", "a=1"]


def test_multi_node_command_uses_c10d_rendezvous() -> None:
    launch = LaunchParams(nnodes=2, nproc_per_node=4, rdzv_endpoint="10.0.0.1:29400", rdzv_id="job7")
    cmd = torchrun_command(launch, ["lafs", "pretrain"], no_python=True)
    assert _option(cmd, "rdzv-backend") == "c10d"
    assert _option(cmd, "rdzv-endpoint") == "10.0.0.1:29400"
    assert _option(cmd, "rdzv-id") == "job7"
    assert "--no-python" in cmd
    assert not any(arg.startswith("--master") for arg in cmd)


def test_static_multi_node_needs_a_port_and_valid_rank() -> None:
    with pytest.raises(ValueError, match="master_port"):
        torchrun_command(LaunchParams(nnodes=2), ["x.py"])
    cmd = torchrun_command(LaunchParams(nnodes=2, node_rank=1, master_port=29500), ["x.py"])
    assert _option(cmd, "node-rank") == "1"
    with pytest.raises(ValidationError):
        LaunchParams(nnodes=2, node_rank=2)


@pytest.mark.slow
def test_exit_codes_become_task_states(prefect_api: str, tmp_path: Path) -> None:
    @flow
    def job(entry: list[str], log_file: str) -> None:
        torchrun_task(LaunchParams(nproc_per_node=2), entry, log_file=log_file)

    ok = job([JOB, "allreduce"], str(tmp_path / "ok.log"), return_state=True)
    assert ok.is_completed()
    log = (tmp_path / "ok.log").read_text()
    assert "rank 0/2 sum=3 tqdm every 30 s" in log  # progress bars log every 30 s, not every step
    assert "rank 1/2 sum=3" in log

    bad = job([JOB, "exit", "3"], str(tmp_path / "bad.log"), return_state=True)
    assert bad.is_failed()
    with pytest.raises(TorchrunError) as info:
        bad.result()
    assert info.value.returncode == 1  # torchrun's own code when a worker fails
    assert "exitcode: 3" in (tmp_path / "bad.log").read_text()


@pytest.mark.slow
def test_timeout_kills_a_job_that_ignores_sigterm(prefect_api: str, tmp_path: Path) -> None:
    @flow
    def job() -> None:
        launch = LaunchParams(nproc_per_node=2, timeout_s=25, grace_s=2)
        torchrun_task(launch, [JOB, "loop", str(tmp_path), "--ignore-sigterm"])

    started = time.monotonic()
    state = job(return_state=True)
    assert state.is_failed()
    with pytest.raises(TorchrunError, match="timed out after 25 s"):
        state.result()
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    assert len(pids) == 2
    assert not [pid for pid in pids if _alive(pid)]
    assert time.monotonic() - started < 25 + 2 + 30


@pytest.mark.slow
def test_cancelling_a_served_flow_leaves_no_training_process(prefect_api: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    server = subprocess.Popen(
        [sys.executable, str(JOBS / "serve_flow.py"), "cancel-test"], env=env, start_new_session=True
    )
    launch_id = None
    try:
        _wait_for_deployment("long-torchrun/cancel-test", server)
        run = run_deployment("long-torchrun/cancel-test", parameters={"pid_dir": str(tmp_path)}, timeout=0)
        deadline = time.monotonic() + 150
        while len(list(tmp_path.glob("rank*.pid"))) < 2:
            assert time.monotonic() < deadline, "the torchrun job did not start"
            assert server.poll() is None, "the serving process died"
            time.sleep(0.5)
        pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
        agent = psutil.Process(pids[0]).parent()
        assert agent is not None
        assert psutil.Process(pids[1]).ppid() == agent.pid
        assert os.getsid(agent.pid) != os.getsid(server.pid), "torchrun must run in its own session"
        launch_id = agent.environ()[LAUNCH_ID_ENV]
        assert {p.pid for p in job_processes(launch_id)} >= {agent.pid, *pids}

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            deadline = time.monotonic() + 90
            while not client.read_flow_run(run.id).state.is_cancelled():
                assert time.monotonic() < deadline, client.read_flow_run(run.id).state
                time.sleep(1)
        deadline = time.monotonic() + 10
        while job_processes(launch_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job_processes(launch_id) == []
        assert not [pid for pid in pids if _alive(pid)]
    finally:
        for proc in job_processes(launch_id) if launch_id else []:
            proc.kill()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
