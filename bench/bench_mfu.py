"""Model-FLOPs utilisation of the training steps (protocols.md 4.5).

For each preset, one step of the fine-tuning stage and one of the pretraining stage are timed: the stages' own step
objects (``FinetuneStage.train_step``, ``PretrainStage.step_on_views``), so the benchmark times what training runs.
Their model FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions and attention, forward and backward; element-wise work is not counted, as usual for MFU)
and divided by the step time; the denominator is the dense matmul peak measured in the same run (fp32 on CPU, bf16
on CUDA). The SSL step is timed twice: on prepared views (the model part) and including the view maker (the whole
step as the trainer runs it with precomputed landmarks). One JSON line per (preset, step).

    python -m bench.bench_mfu --presets tiny,small
    python -m bench.bench_mfu --gpu --presets small,base --batch 128
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from bench.common import emit, matmul_peak_flops, time_per_call
from lafs_core.config import load_config
from lafs_core.config.finetune import FinetuneConfig
from lafs_core.config.pretrain import PretrainConfig
from lafs_core.distributed import DistInfo
from lafs_core.train.finetune import FinetuneStage
from lafs_core.train.pretrain import PretrainStage

# Nominal dense bf16 peaks (FLOP/s) of common accelerators, reported beside the measured peak.
NOMINAL_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

aten = torch.ops.aten


def _cpu_sdpa_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop(query, key, value)


def _cpu_sdpa_backward(grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop(grad, query, key, value)


def _conv_backward(grad: Any, x: Any, weight: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Each requested gradient (input, weight) costs one forward convolution; grouped convs included."""
    output_mask = args[7]
    forward = 2 * grad[0] * math.prod(grad[2:]) * weight[0] * math.prod(weight[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# FlopCounterMode misses the CPU flash-attention kernel SDPA dispatches to, and its convolution_backward formula
# ignores groups (a depthwise 3x3 conv's backward counts ~20x its forward), which would inflate the landmark CNN.
FLOP_FIXES = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
    aten.convolution_backward: _conv_backward,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """Model FLOPs (matmul, conv, attention; forward and backward) of one call of ``fn``."""
    with FlopCounterMode(display=False, custom_mapping=FLOP_FIXES) as counter:
        fn()
    return int(counter.get_total_flops())


def nominal_peak(device_name: str) -> float | None:
    """The vendor's dense bf16 FLOP/s of a known GPU, else None."""
    return next((peak for key, peak in NOMINAL_BF16_PEAK.items() if key in device_name), None)


def random_images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """uint8 RGB faces stand-in; the step's cost does not depend on pixel values."""
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)


def finetune_step(
    preset: str, batch: int, classes: int, device: torch.device, compile_blocks: bool = False
) -> Callable[[], Any]:
    """One step of the fine-tuning stage itself (``FinetuneStage.train_step``: mixup, landmark CNN + sampler + Part
    fViT, CosFace, the landmark regulariser's frozen CNN, backward, AdamW) on one batch of ``batch`` images."""
    overrides = [
        f"global_batch_size={batch}", f"micro_batch_size={batch}", f"cpu_threads={torch.get_num_threads()}",
        "val_pairs=[]", f"compile={str(compile_blocks).lower()}",
    ]  # fmt: skip
    cfg = load_config(FinetuneConfig, preset=preset, overrides=overrides)
    stage = FinetuneStage(cfg, DistInfo(0, 1, 0, device), labels=(batch * 10, classes))
    images = random_images(batch, cfg.model.image_size, device)
    group = [{"images": images, "labels": torch.randint(0, classes, (batch,))}]
    return lambda: stage.train_step(group, 0)


class SSLStep:
    """One step of the pretraining stage itself (``PretrainStage.step_on_views``: teacher on the global views,
    student on all, DINO loss (+ KoLeo), backward, per-tensor clipping, last-layer freeze, AdamW, EMA) on prepared
    views (``model``) or with the view maker first (``full``, as the stage's ``train_step`` runs it)."""

    def __init__(
        self, preset: str, batch: int, local_views: int, device: torch.device, compile_blocks: bool = False
    ) -> None:
        overrides = [
            f"local_views={local_views}", f"global_batch_size={batch}", "probe_every=0",
            f"compile={str(compile_blocks).lower()}",
        ]  # fmt: skip
        cfg = load_config(PretrainConfig, preset=preset, overrides=overrides)
        mcfg = cfg.model
        info = {"num_samples": 10 * batch, "image_size": mcfg.image_size, "num_landmarks": mcfg.num_landmarks}
        info["flip_permutation"] = list(range(mcfg.num_landmarks))
        self.stage = PretrainStage(cfg, DistInfo(0, 1, 0, device), info=info)
        self.images = random_images(batch, mcfg.image_size, device)
        margin = mcfg.patch_size
        self.landmarks = margin + torch.rand(batch, mcfg.num_landmarks, 2, device=device) * (
            mcfg.image_size - 1 - 2 * margin
        )
        self.views = self.stage.views(self.images, self.landmarks)

    def model(self) -> None:
        """The step on the prepared views."""
        self.stage.step_on_views(self.views, 0)

    def full(self) -> None:
        """View making from uint8 images + precomputed landmarks, then the step."""
        self.stage.step_on_views(self.stage.views(self.images, self.landmarks), 0)


def measure(
    name: str, fn: Callable[[], Any], flops: int, peak: float, iters: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Time ``fn`` and emit its achieved FLOP/s and MFU."""
    seconds = time_per_call(fn, warmup=2, iters=iters)
    achieved = flops / seconds
    return emit(
        "mfu",
        step=name,
        model_flops_per_step=flops,
        step_s=seconds,
        images_per_s=extra["batch"] / seconds,
        achieved_flops=achieved,
        peak_flops=peak,
        mfu=achieved / peak,
        **extra,
    )


CPU_BATCH = {"tiny": 32, "small": 8, "base": 4}


def run(
    presets: list[str], batch_size: int | None, local_views: int, classes: int, iters: int, gpu: bool
) -> Iterator[dict]:
    """Measure the peak, then every (preset, step); yields the emitted records."""
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    size = 8192 if gpu else 2048
    peak = matmul_peak_flops(size=size, dtype=dtype)
    nominal = nominal_peak(torch.cuda.get_device_name()) if gpu else None
    yield emit("matmul_peak", peak_flops=peak, size=size, dtype=str(dtype), nominal_peak_flops=nominal)
    for preset in presets:
        batch = batch_size or (128 if gpu else CPU_BATCH.get(preset, 8))
        common = {"preset": preset, "batch": batch, "dtype": "bf16" if gpu else "fp32", "nominal_peak_flops": nominal}
        step = finetune_step(preset, batch, classes, device)
        yield measure("finetune", step, count_flops(step), peak, iters, {**common, "classes": classes})
        ssl = SSLStep(preset, batch, local_views, device)
        flops = count_flops(ssl.model)
        extra = {**common, "local_views": local_views}
        yield measure("ssl_model", ssl.model, flops, peak, iters, extra)
        yield measure("ssl_full", ssl.full, flops, peak, iters, extra)


def main() -> None:
    """Command line: presets, batch, local views, classifier width, timed iterations, --gpu."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small", help="comma-separated presets")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 128 on GPU, CPU_BATCH)")
    parser.add_argument("--local-views", type=int, default=8, help="SSL local views (the recipe's 8)")
    parser.add_argument("--classes", type=int, default=453, help="CosFace classes (lfw-v1 k=4: 453)")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA with bf16 autocast and a bf16 peak")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for _ in run(presets, args.batch, args.local_views, args.classes, args.iters, args.gpu):
        pass


if __name__ == "__main__":
    main()
