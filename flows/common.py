"""What every stage flow shares: the result model, the MLflow child run around a stage, flow hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, Field

from flows import lineage
from flows.launcher import stop_all_groups

STOP_HOOKS = {"on_cancellation": [stop_all_groups], "on_crashed": [stop_all_groups]}


class StageOutput(BaseModel):
    """What a stage returns to the next: paths, content hashes, headline metrics and its MLflow run (no tensors)."""

    stage: str
    run_id: str
    out_dir: str
    artifacts: dict[str, str] = Field(default_factory=dict, description="name -> path")
    hashes: dict[str, str] = Field(default_factory=dict, description="name -> content hash")
    metrics: dict[str, float] = Field(default_factory=dict)
    cached: bool = False


@contextmanager
def tracked_stage(
    stage: str, parent_run_id: str | None, experiment: str = "lafs-pipeline", run_name: str | None = None
) -> Iterator[str]:
    """An MLflow run for one stage (child of ``parent_run_id``), ended FINISHED or FAILED with the block."""
    run_id = lineage.start_run(stage, parent_run_id, experiment, run_name)
    ok = False
    try:
        yield run_id
        ok = True
    finally:
        lineage.finish_run(run_id, ok)


def record_cache_hit(run_id: str, output: StageOutput) -> StageOutput:
    """A cached result came from an earlier run: say so on this stage's run and copy the earlier metrics."""
    if output.run_id == run_id:
        return output
    lineage.client().set_tag(run_id, "lafs.cached_from_run_id", output.run_id)
    lineage.log_run_data(run_id, metrics=output.metrics)
    return output.model_copy(update={"cached": True})
