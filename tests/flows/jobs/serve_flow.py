"""Serve a flow whose task runs a never-ending 2-process torchrun job; the cancellation test cancels it."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.launcher import stop_all_groups, torchrun_task
from flows.params import LaunchParams

JOB = str(Path(__file__).with_name("dist_job.py"))


@flow(name="long-torchrun", on_cancellation=[stop_all_groups], on_crashed=[stop_all_groups])
def long_torchrun(pid_dir: str) -> None:
    """Run the looping job until cancelled."""
    torchrun_task(LaunchParams(nproc_per_node=2, grace_s=5), [JOB, "loop", pid_dir])


if __name__ == "__main__":
    long_torchrun.serve(name=sys.argv[1])
