"""The pipeline chain, defined once: which stage runs on what, with which landmark model, evaluated on which sets.

``labelled source --k-shot--> shards (grid landmarks) --> landmark model (Part fViT, a checkpoint, or the grid)
--> unlabelled shards with its landmarks --> LAFS pretraining --> few-shot fine-tuning --> every evaluation set``

:class:`Chain` turns :class:`~flows.params.PipelineParams` into each stage's parameters; it imports no Prefect, so the
pipeline flow (:mod:`flows.pipeline`, every stage a subflow and an MLflow child run) and the lfw-v1 experiment driver
(``experiments/lfw_v1/run.py``, every stage a ``lafs`` command) run the same chain. ``lfw-v1`` (protocols.md 1 and 2)
is one named configuration in :data:`CONFIGURATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flows.params import (
    EvalSetParams,
    FinetuneParams,
    PartFViTParams,
    PipelineParams,
    PretrainParams,
    ShardsParams,
)
from lafs_core.eval.pairsets import PairSet

# Named configurations of the pipeline: parameter values that fix a protocol, the rest left to the caller.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    # protocols.md 1: LFW View-1 test pairs; SSL on the LFW pool without their people; 4-shot fine-tuning.
    "lfw-v1": {
        "unlabelled": ["lfw"],
        "labelled": "lfw",
        "k": 4,
        "exclude_pairs": "lfw-v1",
        "validation_pairs": "lfw-v1-val",
        "align": "lfw-deepfunneled",
        "landmarks": "train",
        "eval_sets": [{"data": "lfw-v1"}],
    },
}
# The landmark CNN a trained Part fViT exports (the same weights as its last.pt's CNN).
LANDMARK_CNN = "landmark_cnn.pt"
FINAL_CHECKPOINT = "last.pt"


def configuration(name: str, **values: Any) -> PipelineParams:
    """The named configuration ``name`` with ``values`` set over it."""
    if name not in CONFIGURATIONS:
        raise ValueError(f"unknown pipeline configuration {name!r}; choose one of {', '.join(CONFIGURATIONS)}")
    return PipelineParams.model_validate({**CONFIGURATIONS[name], **values})


@dataclass(frozen=True)
class Subsets:
    """The k-shot list of the labelled source (None: all of it)."""

    kshot: str | None


@dataclass(frozen=True)
class Chain:
    """The stages of one pipeline run (its parameters resolved) and where each writes."""

    params: PipelineParams

    @classmethod
    def of(cls, params: PipelineParams) -> Chain:
        """The chain of ``params``, named datasets and the work folder resolved."""
        return cls(params.resolved())

    @property
    def work(self) -> Path:
        return Path(str(self.params.work_dir))

    def write_subsets(self) -> Subsets:
        """The k-shot list of the labelled source (k images of each identity with at least k, the people of the
        excluded and the validation pairs left out, cut to the first ``kshot_identities``), written under
        ``work/subsets``."""
        p = self.params
        if p.k is None:
            return Subsets(None)
        from data_tools.fewshot import select_fewshot
        from data_tools.shards.sources import pair_file_people

        kshot = select_fewshot(p.labelled, p.k, p.seed, exclude_pairs=p.exclude_pairs)
        validation = pair_file_people(self.validation_file())
        entries = [e for e in kshot.entries if e.identity not in validation]
        if p.kshot_identities:
            entries = [e for e in entries if e.label < p.kshot_identities]
        kshot = replace(kshot, entries=entries)
        return Subsets(str(kshot.write(self.work / "subsets" / f"kshot-k{p.k}.json")))

    def validation_file(self) -> str | None:
        """The validation pair file (a named set such as ``lfw-v1-val`` resolved), or None."""
        from data_tools.pairsets import named_pair_file

        pairs = self.params.validation_pairs
        return str(named_pair_file(pairs)) if pairs else None

    def held_out(self) -> list[str]:
        """The pair files whose people no training set may contain: the excluded (test) and validation pairs."""
        return [f for f in (self.params.exclude_pairs, self.validation_file()) if f]

    def kshot_shards(self, subsets: Subsets) -> ShardsParams:
        """The labelled (k-shot) set with grid landmarks: the landmark model's and fine-tuning's training data."""
        p = self.params
        source = subsets.kshot or p.labelled
        return ShardsParams(
            source=source,
            out_dir=str(self.work / "shards" / "kshot"),
            preset=p.preset,
            align=p.align,
            exclude_pairs=[] if subsets.kshot else self.held_out(),
            name="shards-kshot",
        )

    def landmark_stage(self, kshot_dir: str) -> PartFViTParams | None:
        """The Part fViT run that trains the landmark model on the labelled set (None when one is given)."""
        if self.params.landmarks != "train":
            return None
        p = self.params
        overrides = ["val_pairs=[]", f"seed={p.seed}", *p.partfvit_overrides]
        return PartFViTParams(
            preset=p.preset,
            overrides=overrides,
            out_dir=str(self.work / "partfvit"),
            shards=kshot_dir,
            launch=p.partfvit_launch,
        )

    def landmark_model(self, partfvit_dir: str | None) -> str | None:
        """The landmark CNN checkpoint of the run: the trained Part fViT's, the given one, or None (grid)."""
        if partfvit_dir is not None:
            return str(Path(partfvit_dir) / LANDMARK_CNN)
        landmarks = self.params.landmarks
        return landmarks.removeprefix("cnn:") if landmarks.startswith("cnn:") else None

    def pool_shards(self, subsets: Subsets, landmark_cnn: str | None) -> ShardsParams:
        """The pretraining images (the unlabelled sources, or the k-shot images) with the landmark model's points."""
        p = self.params
        on_labelled = p.pretrain_on == "labelled"
        first, *also = [subsets.kshot or p.labelled] if on_labelled else p.unlabelled
        return ShardsParams(
            source=first,
            also=also,
            out_dir=str(self.work / "shards" / ("ssl-kshot" if on_labelled else "pool")),
            preset=p.preset,
            align=p.align,
            landmarks=f"cnn:{landmark_cnn}" if landmark_cnn else "grid",
            max_inputs=p.pool_images,
            exclude_pairs=[] if on_labelled else self.held_out(),
            name="shards-pool",
        )

    def pretrain(self, pool_dir: str, out_dir: str | None = None, overrides: tuple[str, ...] = ()) -> PretrainParams:
        """LAFS pretraining on the pool (``overrides`` after the pipeline's: e.g. a method or seed of a row)."""
        p = self.params
        probe = [f"probe_set={p.validation_pairs}"] if p.validation_pairs else []
        return PretrainParams(
            preset=p.preset,
            overrides=[f"seed={p.seed}", *probe, *p.pretrain_overrides, *overrides],
            out_dir=out_dir or str(self.work / "pretrain"),
            shards=pool_dir,
            launch=p.pretrain_launch,
        )

    def finetune(
        self,
        kshot_dir: str,
        teacher: str | None,
        landmark_cnn: str | None,
        out_dir: str | None = None,
        overrides: tuple[str, ...] = (),
    ) -> FinetuneParams:
        """Few-shot fine-tuning from the teacher (None: a random ViT) and the landmark CNN, verified on the
        validation pairs when there are some (the learning curve; the evaluation sets are the test sets and nothing
        is chosen on them: the last checkpoint is evaluated)."""
        p = self.params
        validation = f"val_pairs=[{p.validation_pairs}]" if p.validation_pairs else "val_pairs=[]"
        return FinetuneParams(
            preset=p.preset,
            overrides=[validation, f"seed={p.seed}", *p.finetune_overrides, *overrides],
            out_dir=out_dir or str(self.work / "finetune"),
            shards=kshot_dir,
            init_backbone=teacher,
            init_landmarks=landmark_cnn,
            registered_model=p.registered_model,
            launch=p.finetune_launch,
        )

    def final_checkpoint(self, finetune_dir: str) -> str:
        """The checkpoint every evaluation set scores: the fine-tuned model at its last step (the one registered)."""
        return str(Path(finetune_dir) / FINAL_CHECKPOINT)


def eval_set_name(spec: EvalSetParams) -> str:
    """The name of an evaluation set in reports, metrics and file names."""
    from lafs_core.eval.report import set_name

    return set_name(spec.name or Path(spec.data).stem or spec.data)


def load_eval_pairs(spec: EvalSetParams) -> PairSet:
    """The pair set of a ``pairs`` evaluation set, cut to ``pairs_per_fold`` when given."""
    from data_tools.pairsets import load_pair_set

    pair_set = load_pair_set(spec.data, spec.images, spec.align)
    pair_set = replace(pair_set, name=spec.name or pair_set.name)
    return pair_set.per_fold(spec.pairs_per_fold) if spec.pairs_per_fold else pair_set


def evaluate_checkpoint(
    checkpoint: str, spec: EvalSetParams, out_dir: str | Path, batch_size: int = 128, pairs: PairSet | None = None
) -> tuple[dict[str, float], list[Path]]:
    """Score a checkpoint on one evaluation set (``pairs``: its pair set, already loaded); writes the JSON report
    ``<out_dir>/<set>.json`` and its ROC PNG. Returns (MLflow metrics, files)."""
    from lafs_core.models.checkpoint import inference_model

    model = inference_model(checkpoint)
    name = eval_set_name(spec)
    json_path = Path(out_dir) / f"{name}.json"
    if spec.kind == "ijb":
        return _evaluate_ijb(model, checkpoint, spec, json_path, batch_size)
    from lafs_core.eval.verify import verify

    verified = verify(model, pairs or load_eval_pairs(spec), batch_size)
    _, json_out, png_out = verified.write(json_path, name, model=checkpoint)
    return verified.metrics(name), [json_out, png_out]


def _evaluate_ijb(
    model: Any, checkpoint: str, spec: EvalSetParams, json_path: Path, batch_size: int
) -> tuple[dict[str, float], list[Path]]:
    from data_tools.readers.ijb import open_ijb
    from lafs_core.eval.ijb import evaluate_ijb
    from lafs_core.eval.report import ijb_report, mlflow_metrics, write_report

    name, meta, faces = open_ijb(spec.data)
    result = evaluate_ijb(model, name, meta, faces, batch_size)
    report = ijb_report(result, model=checkpoint, root=spec.data)
    json_out, png_out = write_report(report, json_path, result.fpr, result.tpr)
    return mlflow_metrics(report), [json_out, png_out]
