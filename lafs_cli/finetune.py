"""`lafs partfvit` and `lafs finetune`: the supervised stages.

Without ``WORLD_SIZE`` in the environment they run in-process on one rank. For several ranks, launch the same
command under torchrun, e.g.::

    torchrun --nproc_per_node 2 --no-python lafs finetune --preset tiny --data shards/lfw-k4 backend=gloo

Every rank runs the command; rank 0 prints the summary and logs to MLflow. The global batch stays fixed and the
accumulation count follows the world size, so ``--resume auto`` may continue a run on a different number of ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lafs_cli.common import ConfigOption, JsonOption, OverridesArgument, PresetOption, print_json, stage_config

DataOption = Annotated[Path | None, typer.Option("--data", help="labelled shard folder (overrides data_dir)")]
OutOption = Annotated[Path | None, typer.Option("--out", help="run folder (overrides output_dir)")]
ResumeOption = Annotated[str | None, typer.Option("--resume", help="'auto', a checkpoint path, or 'none'")]


def _overrides(
    overrides: list[str] | None, data: Path | None, out: Path | None, resume: str | None, **extra: Path | None
) -> list[str]:
    """CLI options turned into ``key=value`` overrides (options win over trailing overrides)."""
    items = list(overrides or [])
    named = {"data_dir": data, "output_dir": out, "resume": resume, **extra}
    items += [f"{key}={value}" for key, value in named.items() if value is not None]
    return items


def _report(summary: dict, as_json: bool) -> None:
    """Print the summary on rank 0 only."""
    from rich.console import Console

    if summary["rank"] != 0:
        return
    if as_json:
        print_json(summary)
        return
    console = Console()
    console.print(f"[bold]{summary['stage']}[/] finished {summary['steps']} steps in {summary['run_dir']}")
    for name, value in summary["metrics"].items():
        if name.endswith("/acc"):
            console.print(f"  {name}: {value:.4f}")
    for name, value in summary.get("artifacts", {}).items():
        console.print(f"  {name}: {value}")


def register(app: typer.Typer) -> None:
    """Add ``partfvit`` and ``finetune`` to ``app``."""

    @app.command("partfvit")
    def partfvit(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        data: DataOption = None,
        out: OutOption = None,
        resume: ResumeOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Train the Part fViT (landmark CNN + ViT, CosFace) and export its landmark CNN for `lafs data shards`."""
        from data_tools.pairsets import load_pair_sets
        from lafs_core.config.finetune import PartFViTConfig
        from lafs_core.train.partfvit import run_partfvit

        cfg = stage_config(PartFViTConfig, config, preset, _overrides(overrides, data, out, resume))
        _report(run_partfvit(cfg, load_pair_sets(cfg.val_pairs)), as_json)

    @app.command("finetune")
    def finetune(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        data: DataOption = None,
        out: OutOption = None,
        resume: ResumeOption = None,
        init: Annotated[Path | None, typer.Option("--init", help="SSL teacher checkpoint (ours or official)")] = None,
        landmarks: Annotated[
            Path | None, typer.Option("--landmarks", help="Part fViT checkpoint or landmark_cnn.pt")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Fine-tune with CosFace (few-shot: point --data at a k-shot shard set) and the landmark regulariser."""
        from data_tools.pairsets import load_pair_sets
        from lafs_core.config.finetune import FinetuneConfig
        from lafs_core.train.finetune import run_finetune

        items = _overrides(overrides, data, out, resume, init_backbone=init, init_landmarks=landmarks)
        cfg = stage_config(FinetuneConfig, config, preset, items)
        _report(run_finetune(cfg, load_pair_sets(cfg.val_pairs)), as_json)
