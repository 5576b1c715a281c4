"""MLflow model registry and run comparison: alias the best model version by a metric; tabulate runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lafs_core.errors import LafsError

Goal = Literal["max", "min"]


@dataclass(frozen=True)
class Champion:
    """The version an alias now points to, and the metric value that chose it."""

    model: str
    version: str
    run_id: str
    metric: str
    value: float
    alias: str
    candidates: int


def _client(tracking_uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def register_best(
    model: str, metric: str, alias: str = "champion", goal: Goal = "max", tracking_uri: str | None = None
) -> Champion:
    """Point ``alias`` at the version of registered ``model`` whose source run has the best ``metric``.

    Versions whose run did not log the metric are ignored; none having it is an error. Ties keep the newest version.
    """
    client = _client(tracking_uri)
    versions = client.search_model_versions(f"name='{model}'")
    if not versions:
        raise LafsError(f"registered model {model!r} has no versions (or does not exist)")
    scored: list[tuple[float, int, Any]] = []
    for version in versions:
        if not version.run_id:
            continue
        value = client.get_run(version.run_id).data.metrics.get(metric)
        if value is not None and math.isfinite(value):
            scored.append((value if goal == "max" else -value, int(version.version), version))
    if not scored:
        raise LafsError(f"no version of {model!r} has a run with metric {metric!r}")
    signed, _, best = max(scored, key=lambda item: (item[0], item[1]))
    client.set_registered_model_alias(model, alias, best.version)
    return Champion(
        model=model,
        version=str(best.version),
        run_id=best.run_id,
        metric=metric,
        value=signed if goal == "max" else -signed,
        alias=alias,
        candidates=len(scored),
    )


def compare_runs(
    metrics: list[str],
    experiments: list[str] | None = None,
    filter_string: str = "",
    max_results: int = 100,
    sort_by: str | None = None,
    goal: Goal = "max",
    tracking_uri: str | None = None,
) -> list[dict[str, Any]]:
    """One row per run (``run_id``, ``run_name``, ``experiment``, ``status`` and each metric, ``None`` if absent).

    ``experiments`` are names (all experiments when omitted). Rows are sorted by ``sort_by`` (default: the first
    metric), best first, runs missing it last.
    """
    client = _client(tracking_uri)
    if experiments:
        found = []
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise LafsError(f"MLflow experiment {name!r} not found")
            found.append(exp)
    else:
        found = client.search_experiments()
    names = {exp.experiment_id: exp.name for exp in found}
    if not names:
        return []
    columns = list(dict.fromkeys([*metrics, *([sort_by] if sort_by else [])]))
    runs = client.search_runs(list(names), filter_string=filter_string, max_results=max_results)
    rows = [
        {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment": names.get(run.info.experiment_id, run.info.experiment_id),
            "status": run.info.status,
            **{m: run.data.metrics.get(m) for m in columns},
        }
        for run in runs
    ]
    key = sort_by or (metrics[0] if metrics else None)
    if key is not None:
        sign = -1.0 if goal == "max" else 1.0
        rows.sort(key=lambda row: (row.get(key) is None, sign * (row.get(key) or 0.0)))
    return rows
