"""``lafs export``: a checkpoint's served model as ONNX (checked against torch) and/or a registered MLflow model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lafs_cli.common import JsonOption, ModelOption, print_json


def export(
    model: ModelOption,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="ONNX file to write (dynamic batch)")] = None,
    registered_name: Annotated[
        str | None, typer.Option("--register", help="log to MLflow and register under this model name")
    ] = None,
    atol: Annotated[float, typer.Option("--atol", help="largest ONNX - torch difference accepted")] = 1e-4,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment of the export run")
    ] = "lafs-export",
    json_out: JsonOption = False,
) -> None:
    """Export a checkpoint: float32 RGB 0..255 (B, 3, S, S) aligned faces -> unit-norm flip-sum embeddings (B, dim).

    The ONNX file is run in onnxruntime on batches of 1 and 5 images and compared with torch; a difference above
    ``--atol`` exits with status 1.
    """
    from lafs_core.errors import ConfigError
    from lafs_core.models.checkpoint import load_face_model

    if onnx is None and registered_name is None:
        raise ConfigError("give --onnx FILE, --register NAME or both")
    face = load_face_model(model).eval()
    size = face.cfg.image_size
    summary: dict[str, object] = {"model": str(model), "image_size": size}
    if onnx is not None:
        from lafs_core.eval.onnx_export import check_images, check_onnx, export_onnx

        meta = {
            "checkpoint": str(model),
            "config": face.cfg.model_dump(mode="json"),
            "convention": face.convention,
            "landmark_cnn": face.landmark_cnn is not None,
        }
        path = export_onnx(face, onnx, size, meta)
        diff = max(check_onnx(path, face, batch) for batch in check_images((1, 5), size))
        summary.update(onnx=str(path), onnx_max_abs_diff=diff)
        if not json_out:
            typer.echo(f"{path}: ONNX vs torch max abs diff {diff:.2e} (batches of 1 and 5)")
        if diff > atol:
            typer.echo(f"ONNX output differs from torch by {diff:.2e} > --atol {atol:g}", err=True)
            raise typer.Exit(1)
    if registered_name is not None:
        from lafs_core import tracking
        from lafs_core.eval.mlflow_model import log_face_model

        with tracking.stage_run(
            "export", experiment=experiment, run_name=f"export-{registered_name}", system_metrics=False
        ) as run:
            run_id = run.info.run_id
            tracking.log_params({"checkpoint": str(model)})
            fmt = log_face_model(face, size, registered_name)
        summary.update(registered=registered_name, run_id=run_id, mlflow_format=fmt)
        if not json_out:
            typer.echo(f"registered {registered_name} (run {run_id}, {fmt}); serve it with: mlflow models "
                       f"serve -m models:/{registered_name}/latest --env-manager local -h 127.0.0.1")  # fmt: skip
    if json_out:
        print_json(summary)


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``lafs`` app."""
    app.command("export")(export)
