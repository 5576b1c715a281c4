"""``lafs data shards | verify | show``: write landmark shards, check them against the manifest, look at them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lafs_cli.common import ConfigOption, JsonOption, OverridesArgument, PresetOption, print_json, stage_config


def shards(
    source: Annotated[Path, typer.Argument(help="face data: image folder, .rec/.idx, .bin, ...")],
    out: Annotated[Path, typer.Argument(help="output folder for shards + manifest")],
    also: Annotated[
        list[Path] | None, typer.Option("--also", help="another source in the same set (repeatable)")
    ] = None,
    landmarks: Annotated[str | None, typer.Option(help="grid | cnn:PATH | mediapipe")] = None,
    align: Annotated[str | None, typer.Option(help="lfw-deepfunneled | none | detect (raw photos)")] = None,
    shard_size: Annotated[int | None, typer.Option(help="samples per shard")] = None,
    workers: Annotated[int | None, typer.Option(help="decode/align/encode worker processes")] = None,
    fewshot: Annotated[Path | None, typer.Option(help="keep only the images of this few-shot list")] = None,
    exclude_pairs: Annotated[
        list[Path] | None, typer.Option(help="drop every person named in this pair file (repeatable)")
    ] = None,
    shard: Annotated[list[int] | None, typer.Option(help="run only these shard jobs (repeatable)")] = None,
    config: ConfigOption = None,
    preset: PresetOption = None,
    overrides: OverridesArgument = None,
    json_out: JsonOption = False,
) -> None:
    """Align, run the landmark model once per image and write WebDataset shards (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from data_tools.shards.precompute import precompute
    from lafs_core.config.data import ShardsConfig

    cfg = stage_config(ShardsConfig, config, preset, overrides)
    given = {"landmarks": landmarks, "align": align, "shard_size": shard_size, "workers": workers}
    cfg = ShardsConfig.model_validate({**cfg.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    with Progress(
        TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=json_out
    ) as bar:
        task = bar.add_task("images", total=None)
        result = precompute(
            [source, *(also or [])],
            out,
            cfg,
            fewshot=fewshot,
            exclude_pairs=exclude_pairs,
            shard_ids=shard,
            progress=lambda n: bar.advance(task, n),
            on_plan=lambda plan: bar.update(task, total=len(plan.entries)),
        )
    info = result.info or {}
    summary = {
        "out": str(result.out_dir),
        "complete": result.info is not None,
        "num_shards": result.num_shards,
        "written": len(result.written),
        "reused": len(result.reused),
        "num_samples": info.get("num_samples"),
        "num_skipped": info.get("num_skipped"),
        "landmark_model": info.get("landmark_model"),
    }
    if json_out:
        print_json(summary)
        return
    typer.echo(
        f"{summary['out']}: {result.num_shards} shards ({len(result.written)} written, {len(result.reused)} reused)"
        + (f", {info['num_samples']} samples, {info['num_skipped']} inputs skipped" if info else ", not finished")
    )


def verify(
    directory: Annotated[Path, typer.Argument(help="shard folder written by `lafs data shards`")],
    json_out: JsonOption = False,
) -> None:
    """Check every shard against the manifest; exit 1 on any mismatch."""
    from data_tools.shards.verify import verify_shards

    report = verify_shards(directory)
    if json_out:
        print_json(report.as_dict())
    else:
        typer.echo(f"{directory}: {report.num_shards} shards, {report.num_samples} samples")
        for problem in report.problems:
            typer.echo(f"problem: {problem}", err=True)
        typer.echo("ok" if report.ok else f"{len(report.problems)} problems")
    if not report.ok:
        raise typer.Exit(1)


def show(
    directory: Annotated[Path, typer.Argument(help="shard folder")],
    n: Annotated[int, typer.Option("-n", help="number of samples")] = 16,
    out: Annotated[Path | None, typer.Option(help="PNG path (default DIR/show.png)")] = None,
) -> None:
    """Write a PNG grid of the first samples with their landmarks drawn."""
    from data_tools.show import landmark_grid, write_png

    path = write_png(landmark_grid(directory, n), out or directory / "show.png")
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add ``shards``, ``verify`` and ``show`` to the ``lafs data`` group."""
    app.command("shards")(shards)
    app.command("verify")(verify)
    app.command("show")(show)
