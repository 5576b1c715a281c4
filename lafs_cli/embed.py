"""``lafs embed``: embeddings of any face source into a Parquet file, one row per image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lafs_cli.common import BatchOption, DeviceOption, JsonOption, ModelOption, WorkersOption, print_json


def embed(
    source: Annotated[Path, typer.Argument(help="faces: image folder, .rec/.idx, .bin, few-shot list, ...")],
    model: ModelOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write")],
    align: Annotated[str, typer.Option("--align", help="none (aligned faces), lfw-deepfunneled or detect")] = "none",
    batch_size: BatchOption = 128,
    workers: WorkersOption = 0,
    device: DeviceOption = "auto",
    json_out: JsonOption = False,
) -> None:
    """Embed every image (flip-sum, L2): Parquet rows key, file, identity, label, embedding; skips are listed."""
    from data_tools.faces import open_faces
    from lafs_core.eval.embed_table import embed_faces, write_embeddings
    from lafs_core.models.checkpoint import inference_model
    from lafs_core.precision import autocast_dtype

    face_model = inference_model(model, device)
    size = face_model.cfg.image_size
    faces = open_faces(source, align, size)
    amp = autocast_dtype("auto", next(face_model.parameters()).device)
    embedded = embed_faces(face_model, faces, batch_size, workers, size, amp, progress=not json_out)
    meta = {
        "model": str(model),
        "source": faces.source.description,
        "align": align,
        "image_size": size,
        "embedding": "flip-sum, L2-normalised",
    }
    path = write_embeddings(embedded, out, meta)
    summary = {
        "out": str(path),
        "images": len(faces),
        "rows": embedded.table.num_rows,
        "dim": int(embedded.features.shape[1]),
        "skipped": embedded.skipped,
    }
    if json_out:
        print_json(summary)
        return
    typer.echo(f"{path}: {summary['rows']} rows of {summary['dim']}-d embeddings, {len(embedded.skipped)} skipped")
    for skip in embedded.skipped:
        typer.echo(f"skipped {skip['file']}: {skip['reason']}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``embed`` to the ``lafs`` app."""
    app.command("embed")(embed)
