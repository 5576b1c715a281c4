"""``lafs pretrain``: LAFS self-supervised pretraining (DINO over landmark tokens), alone or as a torchrun rank.

Without ``WORLD_SIZE`` in the environment the trainer runs in this process. For several processes or nodes, run the
same trainer module under torchrun (every rank reads the same config)::

    torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m lafs_core.train.pretrain --config cfg.yaml [--preset tiny] [--resume auto] [key=value ...]
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from lafs_cli.common import ConfigOption, JsonOption, OverridesArgument, PresetOption, print_json, stage_config

ResumeOption = Annotated[
    str | None, typer.Option("--resume", help="'auto' (latest checkpoint in output_dir), a checkpoint path, or 'none'")
]

TORCHRUN_HINT = (
    "torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:PORT "
    "-m lafs_core.train.pretrain --config cfg.yaml [--resume auto] key=value ..."
)


def register(app: typer.Typer) -> None:
    """Add ``lafs pretrain`` to ``app``."""

    @app.command("pretrain", epilog=f"Multi-process / multi-node: {TORCHRUN_HINT}")
    def pretrain(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        resume: ResumeOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """LAFS self-supervised pretraining; in-process unless launched by torchrun (WORLD_SIZE set)."""
        from lafs_core.config.pretrain import PretrainConfig

        items = list(overrides or [])
        if resume is not None:
            items.append(f"resume={resume}")
        cfg = stage_config(PretrainConfig, config, preset, items)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" not in os.environ:
            typer.echo(f"WORLD_SIZE is set but this is not a torchrun rank; launch with: {TORCHRUN_HINT}", err=True)
            raise typer.Exit(2)
        from data_tools.pairsets import load_pair_set
        from lafs_core.train.pretrain import train

        probe = load_pair_set(cfg.probe_set) if cfg.probe_set and cfg.probe_every else None
        summary = train(cfg, probe)
        if summary["rank"] != 0:
            return
        teacher = summary["artifacts"].get("teacher")
        if json_out:
            print_json({"teacher": teacher, "output_dir": str(cfg.output_dir)})
        elif teacher is not None:
            typer.echo(f"teacher backbone written to {teacher}")
