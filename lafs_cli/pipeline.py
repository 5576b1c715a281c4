"""``lafs pipeline`` and ``lafs demo``: the whole chain on any data as one Prefect flow run with MLflow lineage.

``lafs pipeline lfw-v1`` runs a named configuration (``flows.chain.CONFIGURATIONS``); ``lafs pipeline --unlabelled
SRC --labelled SRC --eval SET ...`` runs it on your data. Without ``PREFECT_API_URL`` the flow runs on Prefect's
ephemeral API (its database in ``PREFECT_HOME``) and MLflow logs to ``MLFLOW_TRACKING_URI`` (default the project's
sqlite file), so both UIs can be opened afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any

import typer

from lafs_cli.common import JsonOption, print_json

# The demo: every stage of lfw-v1 on all 453 k-shot identities, cut to what 2 CPU cores do in under 10 minutes;
# fine-tuning gets the largest share, since the model's accuracy comes from it (docs/results.md, "make demo").
DEMO: dict[str, Any] = {
    "preset": "tiny",
    "pool_images": 2000,
    "partfvit_overrides": ["epochs=3", "log_model=false"],
    "pretrain_overrides": [
        "epochs=3", "iters_per_epoch=100", "probe_every=0", "checkpoint_every=1000", "num_workers=0",
    ],
    "finetune_overrides": ["epochs=30", "val_every=0"],
    "pretrain_launch": {"nproc_per_node": 2},
}  # fmt: skip

StageSet = Annotated[list[str] | None, typer.Option(help="key=value override of this stage (repeatable)")]


def eval_set(spec: str) -> dict[str, str]:
    """An ``--eval`` value as evaluation-set parameters: ``ijb:FOLDER`` is an IJB-B/C set, anything else pairs."""
    if spec.startswith("ijb:"):
        return {"data": spec.removeprefix("ijb:"), "kind": "ijb"}
    return {"data": spec}


def _run(values: dict[str, Any], configuration: str | None, as_json: bool) -> None:
    """Run the pipeline flow with ``values`` (over the named ``configuration``) and print its table (or JSON)."""
    from pathlib import Path

    from lafs_core.env import project_home

    # Prefect creates its home without parents and then cannot open its database: make both exist first.
    for folder in (project_home(), Path(os.environ.get("PREFECT_HOME", project_home() / ".prefect"))):
        folder.mkdir(parents=True, exist_ok=True)
    from flows.chain import CONFIGURATIONS
    from flows.params import PipelineParams
    from flows.pipeline import pipeline_flow
    from lafs_core.errors import ConfigError

    if configuration is not None and configuration not in CONFIGURATIONS:
        raise ConfigError(
            f"unknown pipeline configuration {configuration!r}; choose one of {', '.join(CONFIGURATIONS)}"
        )
    try:
        params = PipelineParams.model_validate({**CONFIGURATIONS.get(configuration or "", {}), **values})
    except ValueError as exc:
        raise ConfigError(f"invalid pipeline parameters: {exc}") from None
    started = time.monotonic()
    result = pipeline_flow(params)
    elapsed = time.monotonic() - started
    if as_json:
        print_json({**json.loads(result.model_dump_json()), "wall_s": round(elapsed, 1)})
        return
    _print_result(result, elapsed)


def _print_result(result: Any, elapsed: float) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from flows.pipeline import summary_rows

    console = Console()
    table = Table(title=f"lafs pipeline ({elapsed / 60:.1f} min)")
    for column in ("stage", "mlflow_run", "cached", "metrics"):
        table.add_column(column)
    for row in summary_rows(result.stages):
        table.add_row(*row.values())
    console.print(table)
    for name, metrics in result.evaluations.items():
        accuracy = metrics.get(f"{name}/acc")
        console.print(f"{name}: accuracy {accuracy * 100:.2f} %" if accuracy is not None else f"{name}: {metrics}")
    console.print(
        f"model {result.registered_model} v{result.version} (aliases: {', '.join(result.aliases)}); "
        f"MLflow parent run {result.parent_run_id}"
    )
    bin_dir = Path(sys.executable).parent
    console.print(
        "Open the UIs:\n"
        f"  MLflow:  {bin_dir / 'mlflow'} ui --backend-store-uri {os.environ.get('MLFLOW_TRACKING_URI', '')} "
        "--host 127.0.0.1 --port 5000   -> http://127.0.0.1:5000\n"
        f"  Prefect: PREFECT_HOME={os.environ.get('PREFECT_HOME', '')} {bin_dir / 'prefect'} server start "
        "--host 127.0.0.1   -> http://127.0.0.1:4200",
        highlight=False,
    )


def pipeline(
    configuration: Annotated[str | None, typer.Argument(help="a named configuration, e.g. lfw-v1")] = None,
    unlabelled: Annotated[
        list[str] | None, typer.Option(help="unlabelled face source of pretraining (repeatable; lfw, yaleb, a path)")
    ] = None,
    labelled: Annotated[str | None, typer.Option(help="labelled face source (att, an identity folder, ...)")] = None,
    k: Annotated[int | None, typer.Option(help="images per identity of the labelled k-shot set (default: all)")] = None,
    landmarks: Annotated[str | None, typer.Option(help="train, grid or cnn:CHECKPOINT (ours or official)")] = None,
    evaluate: Annotated[
        list[str] | None, typer.Option("--eval", help="evaluation set: lfw-v1, a pair file, .bin, folder, ijb:DIR")
    ] = None,
    align: Annotated[str | None, typer.Option(help="none, lfw-deepfunneled, five-point or detect")] = None,
    exclude_pairs: Annotated[str | None, typer.Option(help="people of this pair file leave the training sets")] = None,
    validation_pairs: Annotated[
        str | None,
        typer.Option(help="tuning pairs (a pair file, lfw-v1-val): fine-tuning's learning curve and the SSL probe"),
    ] = None,
    work_dir: Annotated[str | None, typer.Option(help="outputs root (default <LAFS_HOME>/runs/pipeline)")] = None,
    preset: Annotated[str | None, typer.Option(help="tiny, small or base")] = None,
    pool_images: Annotated[int | None, typer.Option(help="pretrain on a seeded sample of N images")] = None,
    kshot_identities: Annotated[int | None, typer.Option(help="cut the k-shot set to N identities")] = None,
    pretrain_nproc: Annotated[int | None, typer.Option(help="torchrun processes of pretraining")] = None,
    partfvit_set: StageSet = None,
    pretrain_set: StageSet = None,
    finetune_set: StageSet = None,
    as_json: JsonOption = False,
) -> None:
    """Run labelled shards -> landmark model -> unlabelled shards -> LAFS pretraining -> few-shot fine-tuning ->
    every evaluation set, as one Prefect flow run (options override the named configuration)."""
    given = {
        "unlabelled": unlabelled, "labelled": labelled, "k": k, "landmarks": landmarks, "align": align,
        "eval_sets": [eval_set(spec) for spec in evaluate] if evaluate else None, "exclude_pairs": exclude_pairs,
        "validation_pairs": validation_pairs, "work_dir": work_dir, "preset": preset, "pool_images": pool_images,
        "kshot_identities": kshot_identities,
        "pretrain_launch": {"nproc_per_node": pretrain_nproc} if pretrain_nproc else None,
        "partfvit_overrides": partfvit_set, "pretrain_overrides": pretrain_set, "finetune_overrides": finetune_set,
    }  # fmt: skip
    _run({key: value for key, value in given.items() if value is not None}, configuration, as_json)


def demo(
    work_dir: Annotated[str | None, typer.Option(help="outputs root (default <LAFS_HOME>/runs/demo)")] = None,
    as_json: JsonOption = False,
) -> None:
    """The whole pipeline on real LFW images at the tiny preset, in CPU minutes (lfw-v1 with a cut pool and short
    stages)."""
    from lafs_core.env import project_home

    typer.echo(
        f"demo: lfw-v1 at the tiny preset (the 4-shot set, {DEMO['pool_images']} pool images, short stages; "
        "about 6 minutes on 2 cores)"
    )
    _run({**DEMO, "work_dir": work_dir or str(project_home() / "runs" / "demo")}, "lfw-v1", as_json)


def register(app: typer.Typer) -> None:
    """Add ``pipeline`` and ``demo`` to ``app``."""
    app.command("pipeline")(pipeline)
    app.command("demo")(demo)
