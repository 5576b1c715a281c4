"""``lafs data``: inspect and convert users' face data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from lafs_cli.common import JsonOption, print_json

if TYPE_CHECKING:
    from data_tools.scan import ScanReport

app = typer.Typer(help="Inspect face data, make few-shot subsets, write and check shards.", no_args_is_help=True)

LayoutOption = Annotated[
    str, typer.Option("--layout", help="image folders: auto, folders (one per identity) or flat (name prefix)")
]


@app.command("scan")
def scan_command(
    path: Annotated[Path, typer.Argument(help="image folder, .rec/.idx (or their folder), .bin, pair file, IJB root")],
    layout: LayoutOption = "auto",
    verify: Annotated[bool, typer.Option("--verify", help="decode every image as well (slower)")] = False,
    json_out: JsonOption = False,
) -> None:
    """Detect the format and count images, identities, images per identity and unreadable files."""
    from rich.progress import track

    from data_tools.scan import scan

    console = Console(stderr=json_out)
    report = scan(
        path,
        layout=layout,  # type: ignore[arg-type]
        verify=verify,
        progress=lambda records, total: iter(track(records, total=total, description="decoding", console=console)),
    )
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(console, report)


def _print_report(console: Console, report: ScanReport) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("path", report.path)
    table.add_row("format", report.format)
    table.add_row("images", str(report.images))
    table.add_row("identities", str(report.identities))
    if report.per_identity:
        table.add_row("images per identity", ", ".join(f"{k} {v}" for k, v in report.per_identity.items()))
    for key, value in report.details.items():
        table.add_row(key, str(value))
    table.add_row("ignored non-image files", str(report.ignored))
    table.add_row("bad (skipped)", str(len(report.bad)))
    table.add_row("unreadable", str(len(report.unreadable)))
    console.print(table)
    for label, items in (("bad", report.bad), ("unreadable", report.unreadable)):
        for item in items:
            console.print(f"  {label}: {item['file']}: {item['reason']}", highlight=False, markup=False, soft_wrap=True)


@app.command("fewshot")
def fewshot_command(
    root: Annotated[Path, typer.Argument(help="image folder (e.g. lfw-deepfunneled)")],
    k: Annotated[int, typer.Option("--k", "-k", help="images per identity (identities with fewer are left out)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the chosen list (JSON)")],
    seed: Annotated[int, typer.Option("--seed", help="selection seed")] = 0,
    exclude_pairs: Annotated[
        Path | None, typer.Option("--exclude-pairs", help="leave out every person of this LFW pair file")
    ] = None,
    val_pairs: Annotated[
        Path | None,
        typer.Option(
            "--val-pairs",
            help="also write tuning pairs (LFW pair file): 500 same + 500 different pairs of pool people with 2..k-1 "
            "images (protocols.md 1.5); needs --exclude-pairs; leave their people out of pretraining with a second "
            "--exclude-pairs of `lafs data shards`",
        ),
    ] = None,
    layout: LayoutOption = "auto",
    json_out: JsonOption = False,
) -> None:
    """Choose k images per identity with a fixed seed and write the list (lfw-v1: --exclude-pairs pairsDevTest.txt)."""
    from data_tools.fewshot import select_fewshot, select_validation_pairs
    from lafs_core.errors import ConfigError

    if val_pairs is not None and exclude_pairs is None:
        raise ConfigError("--val-pairs needs --exclude-pairs (the test pairs the validation people must avoid)")
    subset = select_fewshot(root, k=k, seed=seed, exclude_pairs=exclude_pairs, layout=layout)  # type: ignore[arg-type]
    subset.write(out)
    if val_pairs is not None and exclude_pairs is not None:
        select_validation_pairs(root, k, exclude_pairs, seed=seed).write(val_pairs)
    summary = {
        "out": str(out),
        "k": subset.k,
        "seed": subset.seed,
        "pool_images": subset.pool_images,
        "pool_identities": subset.pool_identities,
        "identities": subset.identities,
        "images": len(subset.entries),
        "excluded_people": (subset.exclude_pairs or {}).get("people_in_folder", 0),
        "val_pairs": str(val_pairs) if val_pairs else None,
    }
    if json_out:
        print_json(summary)
        return
    typer.echo(
        f"pool {summary['pool_images']} images / {summary['pool_identities']} identities "
        f"({summary['excluded_people']} excluded people); chose k={k}: {summary['identities']} identities, "
        f"{summary['images']} images -> {out}" + (f"; validation pairs -> {val_pairs}" if val_pairs else "")
    )
