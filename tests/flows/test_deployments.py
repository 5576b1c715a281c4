"""`prefect deploy --all` registers every deployment of prefect.yaml, with its pool, parameters and schedule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client

REPO = Path(__file__).resolve().parents[2]


def _prefect(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_deploy_all_registers_every_deployment(prefect_api: str, tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    expected = {(d["entrypoint"], d["name"]) for d in spec["deployments"]}
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "LAFS_PROJECT_DIR": str(REPO), "LAFS_SHARED": "/data/x"}
    created = _prefect(["work-pool", "create", "lafs-process", "--type", "process", "--overwrite"], env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(["deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    with get_client(sync_client=True) as client:
        found = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    by_name = {d.name: d for d in found}
    assert {name for _, name in expected} <= set(by_name)
    for entrypoint, name in expected:
        deployment = by_name[name]
        assert deployment.entrypoint == entrypoint
        assert deployment.work_pool_name == "lafs-process"
        assert "params" in deployment.parameter_openapi_schema["properties"]
    assert flows[by_name["pipeline-lfw-v1"].flow_id] == "lafs-pipeline"
    nightly = by_name["champion-nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.parameters["params"]["model"] == "models:/lafs-face@champion"
    yours = by_name["pipeline-your-data"].parameters["params"]
    assert yours["unlabelled"] == ["/data/x/datasets/extended_yale_b_cropped/CroppedYale"]
    assert yours["eval_sets"] == [{"data": "/data/x/datasets/yalefaces/yalefaces"}]
    shards_source = by_name["shards-default"].parameters["params"]["source"]
    assert shards_source == "/data/x/datasets/lfw_deepfunneled/lfw-deepfunneled"
    pull = by_name["pipeline-lfw-v1"].pull_steps
    assert pull[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
