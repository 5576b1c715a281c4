"""``lafs eval``: verification, 1:N identification, IJB, registry and comparison of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lafs_cli.common import BatchOption, DeviceOption, JsonOption, ModelOption, WorkersOption, print_json

app = typer.Typer(
    help="Evaluate models: 10-fold verification, 1:N identification, IJB-B/C, registry aliases.", no_args_is_help=True
)
console = Console()

MlflowOption = Annotated[
    bool, typer.Option("--mlflow/--no-mlflow", help="log metrics, JSON and ROC PNG to MLflow (MLFLOW_RUN_ID or new)")
]
ExperimentOption = Annotated[str, typer.Option("--experiment", help="MLflow experiment of a new run")]
JsonReport = Annotated[Path | None, typer.Option("--json", help="report path (a ROC PNG beside it where there is one)")]
NameOption = Annotated[str | None, typer.Option("--name", help="set name in metrics (default from the data)")]


def _log_report(
    enabled: bool, experiment: str, run_name: str, metrics: dict[str, float], files: tuple[Path, ...], folder: str
) -> None:
    """With ``--mlflow``: the report's metrics and files in the evaluation's MLflow run (``tracking.stage_run``: the
    active run, ``MLFLOW_RUN_ID`` or a new child run of the pipeline run)."""
    if not enabled:
        return
    from lafs_core import tracking
    from lafs_core.eval.report import log_to_mlflow

    with tracking.stage_run("eval", experiment=experiment, run_name=run_name, system_metrics=False):
        log_to_mlflow(metrics, files, folder)


def _default_out(model: Path, name: str) -> Path:
    from lafs_core.env import project_home
    from lafs_core.eval.report import set_name

    return project_home() / "runs" / "eval" / f"{model.stem}_{set_name(name)}.json"


def _check_choice(value: str, allowed: tuple[str, ...], option: str) -> None:
    from lafs_core.errors import ConfigError

    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}, not {value!r}")


@app.command()
def verify(
    model: ModelOption,
    pairs: Annotated[
        str, typer.Option("--pairs", "-p", help="LFW pair file, .bin, labelled folder, or lfw-v1/lfw-v2/att/yaleb/yale")
    ],
    images: Annotated[Path | None, typer.Option("--images", help="image root of an LFW pair file")] = None,
    json_out: JsonReport = None,
    align: Annotated[str, typer.Option("--align", help="auto, lfw-deepfunneled, none or detect")] = "auto",
    metric: Annotated[str, typer.Option("--metric", help="sq_l2 or cosine")] = "sq_l2",
    thresholds: Annotated[str, typer.Option("--thresholds", help="exact (every cut) or grid (official)")] = "exact",
    seed: Annotated[int, typer.Option("--seed", help="seed of generated pairs for a labelled folder")] = 0,
    name: NameOption = None,
    batch_size: BatchOption = 128,
    workers: WorkersOption = 0,
    device: DeviceOption = "auto",
    mlflow_log: MlflowOption = False,
    experiment: ExperimentOption = "lafs-eval",
) -> None:
    """10-fold verification accuracy (mean +- std), TAR@FAR, AUC and the ROC of a checkpoint on a pair set."""
    from data_tools.pairsets import load_pair_set
    from lafs_core.eval.report import mlflow_metrics, set_name
    from lafs_core.eval.verify import verify as verify_model
    from lafs_core.models.checkpoint import inference_model

    _check_choice(align, ("auto", "lfw-deepfunneled", "none", "detect"), "--align")
    _check_choice(metric, ("sq_l2", "cosine"), "--metric")
    _check_choice(thresholds, ("exact", "grid"), "--thresholds")
    if align == "detect":
        from data_tools.detect import default_detector

        default_detector()  # the install hint now, not from inside a decoding worker
    pair_set = load_pair_set(pairs, images, align, seed)  # type: ignore[arg-type]
    label = name or pair_set.name
    console.print(f"{label}: {len(pair_set)} pairs, {len(pair_set.images)} images, {pair_set.fold_rule} folds")
    verified = verify_model(
        inference_model(model, device),
        pair_set,
        batch_size,
        workers,
        metric,
        thresholds,
        progress=True,  # type: ignore[arg-type]
    )
    report, json_path, png_path = verified.write(
        json_out or _default_out(model, label), label, model=str(model), thresholds=thresholds
    )
    _log_report(mlflow_log, experiment, f"eval-{label}", mlflow_metrics(report), (json_path, png_path), set_name(label))
    res = verified.result
    tars = ", ".join(f"TAR@FAR={k} {v:.4f}" for k, v in report["tar_at_far"].items())
    console.print(
        f"[bold]{label}[/]: accuracy {res.accuracy_mean * 100:.2f} +- {res.accuracy_std * 100:.2f} % "
        f"({res.pairs} pairs, {res.folds} folds), AUC {res.auc:.4f}, {tars}",
        highlight=False,
    )
    if verified.images_skipped:
        console.print(f"[yellow]{verified.images_skipped} unreadable images, {verified.pairs_skipped} pairs left out")
    console.print(f"report: {json_path}\nROC: {png_path}", highlight=False)


@app.command()
def identify(
    model: ModelOption,
    data: Annotated[
        str, typer.Option("--data", "-d", help="labelled source: image folder, .rec, ... or att / yale / yaleb")
    ],
    align: Annotated[str, typer.Option("--align", help="none, lfw-deepfunneled or detect")] = "none",
    gallery_per_id: Annotated[
        int, typer.Option("--gallery-per-id", min=1, help="images enrolled per gallery identity")
    ] = 1,
    unenrolled: Annotated[
        float, typer.Option("--unenrolled", min=0.0, max=0.95, help="share of identities kept out (non-mated probes)")
    ] = 0.2,
    fpir: Annotated[list[float] | None, typer.Option("--fpir", help="FPIR of a TPIR figure (repeat)")] = None,
    rank: Annotated[list[int] | None, typer.Option("--rank", min=1, help="CMC rank (repeat)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the gallery/probe split")] = 0,
    name: NameOption = None,
    json_out: JsonReport = None,
    batch_size: BatchOption = 128,
    workers: WorkersOption = 0,
    device: DeviceOption = "auto",
    mlflow_log: MlflowOption = False,
    experiment: ExperimentOption = "lafs-eval",
) -> None:
    """1:N identification on a labelled source: rank-1 (CMC) and TPIR at FPIR with a seeded gallery/probe split."""
    from data_tools.faces import open_faces
    from data_tools.pairsets import named_source
    from lafs_core.errors import ConfigError, DataError
    from lafs_core.eval import identification as ident
    from lafs_core.eval.report import set_name, write_json
    from lafs_core.models.checkpoint import inference_model
    from lafs_core.precision import autocast_dtype

    fpirs = tuple(fpir or ident.DEFAULT_FPIRS)
    if not all(0.0 < f < 1.0 for f in fpirs):
        raise ConfigError(f"--fpir values must be in (0, 1), not {list(fpirs)}")
    face_model = inference_model(model, device)
    faces = open_faces(data, align, face_model.cfg.image_size)
    labels = [e.label for e in faces.entries]
    if max(labels) < 1:
        raise DataError(named_source(data), "identification needs labelled images of at least two identities")
    label = name or set_name(Path(data).name)
    amp = autocast_dtype("auto", next(face_model.parameters()).device)
    try:
        found = ident.identify_source(
            face_model, faces, labels, gallery_per_id, unenrolled, seed, batch_size, workers, fpirs,  # type: ignore[arg-type]
            tuple(rank or ident.DEFAULT_RANKS), amp, progress=True,
        )  # fmt: skip
    except ValueError as exc:
        raise DataError(named_source(data), str(exc)) from None
    report = ident.identification_report(
        found, label, model=str(model), source=str(named_source(data)), align=align, seed=seed,
        gallery_per_identity=gallery_per_id, unenrolled_fraction=unenrolled,
    )  # fmt: skip
    json_path = write_json(report, json_out or _default_out(model, f"{label}_identify"))
    metrics = ident.identification_metrics(report, set_name(label))
    _log_report(mlflow_log, experiment, f"identify-{label}", metrics, (json_path,), set_name(label))
    _print_identification(label, found, json_path)


def _print_identification(label: str, found: Any, json_path: Path) -> None:
    res = found.result
    cmc = ", ".join(f"rank-{k} {v * 100:.2f} %" for k, v in res.cmc.items())
    tpirs = ", ".join(f"TPIR@FPIR={f:g} {v * 100:.2f} %" for f, v in res.tpir.items()) or "no non-mated probes"
    console.print(
        f"[bold]{label}[/]: {res.gallery_identities} gallery identities ({res.gallery_images} images), "
        f"{res.mated_probes} mated and {res.non_mated_probes} non-mated probes; {cmc}; {tpirs}",
        highlight=False,
    )
    if found.images_skipped:
        console.print(f"[yellow]{found.images_skipped} of {found.images} images unreadable or without a face, skipped")
    console.print(f"report: {json_path}", highlight=False)


@app.command()
def ijb(
    model: ModelOption,
    root: Annotated[Path, typer.Option("--root", help="IJB folder with loose_crop/ and meta/")],
    name: Annotated[str | None, typer.Option("--name", help="ijbb or ijbc (default: from meta/)")] = None,
    json_out: JsonReport = None,
    norm_score: Annotated[
        bool, typer.Option("--norm-score/--no-norm-score", help="keep feature norms as quality weights (official)")
    ] = True,
    detector_score: Annotated[
        bool, typer.Option("--detector-score/--no-detector-score", help="weight images by detector score")
    ] = True,
    tar_rule: Annotated[str, typer.Option("--tar-rule", help="interp, or nearest (official IJB rule)")] = "interp",
    batch_size: BatchOption = 128,
    workers: WorkersOption = 0,
    device: DeviceOption = "auto",
    mlflow_log: MlflowOption = False,
    experiment: ExperimentOption = "lafs-eval",
) -> None:
    """IJB-B/C 1:1 template verification: TAR at FAR 1e-6 ... 1e-1 (headline 1e-4)."""
    from data_tools.readers.ijb import open_ijb
    from lafs_core.eval.ijb import evaluate_ijb
    from lafs_core.eval.report import ijb_report, mlflow_metrics, set_name, write_report
    from lafs_core.models.checkpoint import inference_model
    from lafs_core.precision import autocast_dtype

    _check_choice(tar_rule, ("interp", "nearest"), "--tar-rule")
    face_model = inference_model(model, device)
    set_label, meta, faces = open_ijb(root, name)
    result = evaluate_ijb(
        face_model, set_label, meta, faces, batch_size, workers,
        use_norm_score=norm_score, use_detector_score=detector_score, tar_method=tar_rule,  # type: ignore[arg-type]
        autocast_dtype=autocast_dtype("auto", next(face_model.parameters()).device), progress=True,
    )  # fmt: skip
    report = ijb_report(
        result, model=str(model), root=str(root), norm_score=norm_score, detector_score=detector_score,
        tar_rule=tar_rule,
    )  # fmt: skip
    json_path, png_path = write_report(report, json_out or _default_out(model, result.name), result.fpr, result.tpr)
    files = (json_path, png_path)
    _log_report(mlflow_log, experiment, f"eval-{result.name}", mlflow_metrics(report), files, set_name(result.name))
    tars = ", ".join(f"{k}: {v * 100:.2f}" for k, v in report["tar_at_far"].items())
    console.print(
        f"[bold]{result.name}[/]: {result.pairs} pairs, {result.templates} templates; TAR (%) at FAR {tars}",
        highlight=False,
    )
    if result.images_skipped:
        console.print(f"[yellow]{result.images_skipped} of {result.images} images unreadable and skipped")
    console.print(f"report: {json_path}\nROC: {png_path}", highlight=False)


@app.command()
def register(
    model_name: Annotated[str, typer.Option("--model-name", help="registered model name")],
    metric: Annotated[str, typer.Option("--metric", help="run metric that ranks versions, e.g. lfw-v1/acc")],
    alias: Annotated[str, typer.Option("--alias", help="alias to set")] = "champion",
    goal: Annotated[str, typer.Option("--goal", help="max or min")] = "max",
    json_output: JsonOption = False,
) -> None:
    """Point a registry alias (e.g. champion) at the model version whose run has the best metric."""
    from lafs_core.errors import ConfigError
    from lafs_core.eval.registry import register_best

    if goal not in ("max", "min"):
        raise ConfigError(f"--goal must be max or min, not {goal!r}")
    champion = register_best(model_name, metric, alias, goal)  # type: ignore[arg-type]
    if json_output:
        print_json(champion.__dict__)
        return
    console.print(
        f"{champion.model}@{champion.alias} -> version {champion.version} ({champion.metric} = {champion.value:.4f}, "
        f"best of {champion.candidates}, run {champion.run_id})",
        highlight=False,
    )


@app.command()
def compare(
    metrics: Annotated[list[str], typer.Option("--metric", "-m", help="metric column (repeat, or comma-separate)")],
    experiments: Annotated[
        list[str] | None, typer.Option("--experiment", "-e", help="experiment name (repeat; default all)")
    ] = None,
    filter_string: Annotated[str, typer.Option("--filter", help="MLflow run filter, e.g. tags.lafs.stage='eval'")] = "",
    sort_by: Annotated[str | None, typer.Option("--sort-by", help="metric to sort by (default: the first)")] = None,
    goal: Annotated[str, typer.Option("--goal", help="max or min: which end of --sort-by is best")] = "max",
    max_results: Annotated[int, typer.Option("--max-results", min=1)] = 100,
    json_output: JsonOption = False,
) -> None:
    """Table of MLflow runs with the given metrics, best first."""
    from rich.table import Table

    from lafs_core.errors import ConfigError
    from lafs_core.eval.registry import compare_runs

    if goal not in ("max", "min"):
        raise ConfigError(f"--goal must be max or min, not {goal!r}")
    names = [m.strip() for item in metrics for m in item.split(",") if m.strip()]
    rows = compare_runs(names, experiments, filter_string, max_results, sort_by, goal)  # type: ignore[arg-type]
    if json_output:
        print_json(rows)
        return
    metric_columns = list(dict.fromkeys([*names, *([sort_by] if sort_by else [])]))
    table = Table(title=f"{len(rows)} runs")
    for column in ("run", "experiment", "status"):
        table.add_column(column)
    for column in metric_columns:
        table.add_column(column, justify="right")
    table.add_column("run_id")
    for row in rows:
        cells = [row["run_name"], row["experiment"], row["status"], *[row.get(c) for c in metric_columns]]
        table.add_row(*[_cell(v) for v in [*cells, row["run_id"]]])
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
