"""``lafs pipeline`` and ``lafs demo``: the whole ``lfw-v1`` chain as one Prefect flow run with MLflow lineage.

Without ``PREFECT_API_URL`` the flow runs on Prefect's ephemeral API (its database in ``PREFECT_HOME``) and MLflow
logs to ``MLFLOW_TRACKING_URI`` (default the project's sqlite file), so both UIs can be opened afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any

import typer

from lafs_core.cli.common import JsonOption, print_json

# The demo: real LFW images, tiny preset, a cut-down pool and k-shot set, a few steps per stage (CPU minutes).
DEMO: dict[str, Any] = {
    "preset": "tiny",
    "k": 4,
    "kshot_identities": 120,
    "pool_images": 600,
    "partfvit_overrides": ["max_steps=10", "val_pairs=[]", "log_model=false"],
    "pretrain_overrides": ["max_steps=30", "probe_every=0", "checkpoint_every=1000", "num_workers=0"],
    "finetune_overrides": ["max_steps=20", "val_every=0"],
    "pretrain_launch": {"nproc_per_node": 2},
}

StageSet = Annotated[list[str] | None, typer.Option(help="key=value override of this stage (repeatable)")]


def _run(values: dict[str, Any], as_json: bool) -> None:
    """Run the pipeline flow with ``values`` and print its table (or JSON)."""
    from pathlib import Path

    from lafs_core.env import project_home

    # Prefect creates its home without parents and then cannot open its database: make both exist first.
    for folder in (project_home(), Path(os.environ.get("PREFECT_HOME", project_home() / ".prefect"))):
        folder.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    from flows.params import PipelineParams
    from flows.pipeline import pipeline_flow, summary_rows
    from lafs_core.errors import ConfigError

    try:
        params = PipelineParams.model_validate(values)
    except ValueError as exc:
        raise ConfigError(f"invalid pipeline parameters: {exc}") from None
    started = time.monotonic()
    result = pipeline_flow(params)
    elapsed = time.monotonic() - started
    if as_json:
        print_json({**json.loads(result.model_dump_json()), "wall_s": round(elapsed, 1)})
        return
    console = Console()
    table = Table(title=f"lafs pipeline ({elapsed / 60:.1f} min)")
    for column in ("stage", "mlflow_run", "cached", "metrics"):
        table.add_column(column)
    for row in summary_rows(result.stages):
        table.add_row(*row.values())
    console.print(table)
    evaluation = result.stages["eval"].metrics
    accuracy = next((v for k, v in evaluation.items() if k.endswith("/acc")), float("nan"))
    console.print(
        f"View-1 accuracy {accuracy * 100:.2f} %; model {result.registered_model} v{result.version} "
        f"(aliases: {', '.join(result.aliases)}); MLflow parent run {result.parent_run_id}"
    )
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    home = os.environ.get("PREFECT_HOME", "")
    bin_dir = Path(sys.executable).parent
    console.print(
        "Open the UIs:\n"
        f"  MLflow:  {bin_dir / 'mlflow'} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        "   -> http://127.0.0.1:5000\n"
        f"  Prefect: PREFECT_HOME={home} {bin_dir / 'prefect'} server start --host 127.0.0.1"
        "   -> http://127.0.0.1:4200",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``pipeline`` and ``demo`` to ``app``."""

    @app.command("pipeline")
    def pipeline(
        work_dir: Annotated[str | None, typer.Option(help="outputs root (default <LAFS_HOME>/runs/pipeline)")] = None,
        preset: Annotated[str, typer.Option(help="tiny, small or base")] = "tiny",
        k: Annotated[int, typer.Option(help="images per identity of the k-shot set")] = 4,
        pool_images: Annotated[int | None, typer.Option(help="cut the pretraining pool to N images")] = None,
        kshot_identities: Annotated[int | None, typer.Option(help="cut the k-shot set to N identities")] = None,
        pretrain_nproc: Annotated[int, typer.Option(help="torchrun processes of pretraining")] = 2,
        partfvit_set: StageSet = None,
        pretrain_set: StageSet = None,
        finetune_set: StageSet = None,
        as_json: JsonOption = False,
    ) -> None:
        """Run shards -> Part fViT -> LAFS pretraining -> few-shot fine-tuning -> View-1 evaluation."""
        _run(
            {
                "work_dir": work_dir,
                "preset": preset,
                "k": k,
                "pool_images": pool_images,
                "kshot_identities": kshot_identities,
                "pretrain_launch": {"nproc_per_node": pretrain_nproc},
                "partfvit_overrides": partfvit_set or [],
                "pretrain_overrides": pretrain_set or [],
                "finetune_overrides": finetune_set or [],
            },
            as_json,
        )

    @app.command("demo")
    def demo(
        work_dir: Annotated[str | None, typer.Option(help="outputs root (default <LAFS_HOME>/runs/demo)")] = None,
        as_json: JsonOption = False,
    ) -> None:
        """The whole pipeline on real LFW images at the tiny preset, in CPU minutes (a subset of lfw-v1)."""
        from lafs_core.env import project_home

        typer.echo(
            f"demo: lfw-v1 at the tiny preset on a subset ({DEMO['kshot_identities']} k-shot identities x "
            f"{DEMO['k']}, {DEMO['pool_images']} pool images), a few steps per stage"
        )
        _run({**DEMO, "work_dir": work_dir or str(project_home() / "runs" / "demo")}, as_json)
