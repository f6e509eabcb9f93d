"""One training step: our RetinaNet (focal head) against the stock torchvision head, side by side.

Both models come from :func:`detector.model.build.build_model` with the same recipe except
``model.head`` (``focal`` for ours, ``torchvision`` for the stock ``RetinaNetHead`` and its
per-image loss), with ``head_convs=4``, ``head_channels=fpn_channels`` and ``loss.box=l1`` so
that the two compute the same architecture and loss terms. Same backbone, FPN, anchors,
matcher, images and optimiser (the recipe's: AdamW for ``bccd_r18``).

A step is what the trainer does per batch: forward with the losses, backward, optimiser step
(``zero_grad(set_to_none=True)`` first; on CUDA with ``--amp``, ``torch.autocast`` fp16 and a
``GradScaler``). Images are synthetic: uniform noise, ~15 boxes per image (between 10 and 20,
16-128 px sides, 3 classes), several different batches cycled so no step sees the previous
step's exact input twice in a row.

Checked before timing (else the script exits non-zero): the stock model's weights are copied
into ours (``head.log_vars`` is ours alone and unused with fixed weighting), then

1. on a batch of one image repeated N times (so every image has the same number of positive
   anchors, where the batch-normalised and the per-image-normalised losses are equal), both
   loss terms agree (rtol 1e-4) and so do the gradients of every parameter (atol 1e-4 x the
   largest gradient of that parameter, rtol 1e-3);
2. on a realistic batch (different boxes per image), both loss terms are reported: they must be
   finite and within a factor 2 of each other (they differ only by the normalisation).

Timing: ``--warmup`` steps per model, then ``--repeats`` rounds, each timing ``--steps`` steps of
the stock model then ``--steps`` of ours (A B A B ...); img/s = batch x steps / seconds per
round; median and [min-max] over the rounds; ratio = ours / stock. Peak memory (CUDA only): the
``max_memory_allocated`` of the last round of each model, after ``reset_peak_memory_stats``.

The two models differ only in the loss, so the script also times the loss alone (anchor
matching, ``head.compute_loss`` and its backward to the head outputs, on the same detached head
outputs for both), ``--loss-repeats`` calls each, interleaved after one warm-up call.

    .venv/bin/python bench/train_step.py [--cases bccd-r18 r50-384] [--repeats 6] [--steps 1]
                                         [--device cpu|cuda] [--amp] [--channels-last]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from train_step_setup import (
    CASES,
    OURS,
    REFERENCE,
    Batch,
    Case,
    Targets,
    Trainee,
    make_batch,
    recipe,
    sync,
)


def gradients(model: nn.Module, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    torch.autograd.backward(torch.stack(list(losses.values())).sum())
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def check(case: Case, stock: Trainee, ours: Trainee, device: torch.device) -> list[str]:
    """Make ours a copy of the stock model; compare losses and gradients. Exit on a mismatch."""
    missing, unexpected = ours.model.load_state_dict(stock.model.state_dict(), strict=False)
    if missing != ["head.log_vars"] or unexpected:
        raise SystemExit(f"weights do not map: missing {missing}, unexpected {unexpected}")
    lines = []
    # Full fp32 on the check: AMP, and TF32 (cuDNN's default for convolutions on Ampere and
    # later, ~1e-3 relative), would make the comparison about rounding, not about the loss.
    saved = stock.amp, ours.amp
    saved_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    stock.amp = ours.amp = False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        same = make_batch(case, device, seed=1000, same_image=True)
        ref, mine = stock.losses(same), ours.losses(same)
        for name in ref:
            try:
                torch.testing.assert_close(mine[name], ref[name], rtol=1e-4, atol=0.0)
            except AssertionError as exc:
                raise SystemExit(
                    f"{case.name}: {name} loss differs on a repeated image: {exc}"
                ) from None
        ref_grads = gradients(stock.model, ref)
        my_grads = gradients(ours.model, mine)
        if ref_grads.keys() != my_grads.keys():
            raise SystemExit(f"{case.name}: different trainable parameters")
        worst = 0.0
        for name, g in ref_grads.items():
            scale = float(g.abs().max()) or 1.0
            diff = float((my_grads[name] - g).abs().max()) / scale
            worst = max(worst, diff)
            try:
                torch.testing.assert_close(my_grads[name], g, rtol=1e-3, atol=1e-4 * scale)
            except AssertionError as exc:
                raise SystemExit(f"{case.name}: gradient of {name} differs: {exc}") from None
        terms = ", ".join(
            f"{n} stock {ref[n].item():.5f} ours {mine[n].item():.5f}" for n in sorted(ref)
        )
        lines.append(
            f"{case.name}: one image x {case.batch} (equal positives per image): {terms}; "
            f"max grad diff / max |grad| over {len(ref_grads)} parameters {worst:.1e}"
        )
        real = make_batch(case, device, seed=0)
        with torch.no_grad():
            ref, mine = stock.losses(real), ours.losses(real)
        for name in ref:
            r, m = ref[name].item(), mine[name].item()
            if not (torch.isfinite(ref[name]) and torch.isfinite(mine[name]) and 0.5 < m / r < 2):
                raise SystemExit(f"{case.name}: {name} loss stock {r} vs ours {m} on a real batch")
        terms = ", ".join(
            f"{n} stock {ref[n].item():.5f} ours {mine[n].item():.5f}" for n in sorted(ref)
        )
        lines.append(f"{case.name}: realistic batch (10-20 boxes per image): {terms}")
    finally:
        stock.amp, ours.amp = saved
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    # The check left gradients behind and no optimiser state: start both from a clean slate.
    stock.optimizer.zero_grad(set_to_none=True)
    ours.optimizer.zero_grad(set_to_none=True)
    return lines


@dataclass
class Result:
    seconds: dict[str, list[float]]
    peak_bytes: dict[str, int | None]
    loss_seconds: dict[str, list[float]]
    """Per call of the loss alone (matching + head.compute_loss + its backward)."""


def time_steps(trainee: Trainee, batches: Sequence[Batch], steps: int, start: int) -> float:
    device = trainee.device
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        trainee.step(batches[(start + i) % len(batches)])
    sync(device)
    return time.perf_counter() - t0


LossInputs = tuple[Targets, dict[str, Tensor], list[Tensor]]


def head_outputs(model: RetinaNet, batch: Batch) -> LossInputs:
    """What ``RetinaNet.compute_loss`` takes: targets, detached head outputs and anchors."""
    images, targets = batch
    with torch.no_grad():
        image_list, moved = model.transform(images, targets)
        assert moved is not None
        features = list(model.backbone(image_list.tensors).values())
        outputs = model.head(features)
        anchors = model.anchor_generator(image_list, features)
    return moved, {k: v.detach() for k, v in outputs.items()}, anchors


def time_loss(
    trainee: Trainee, targets: Targets, outputs: dict[str, Tensor], anchors: list[Tensor]
) -> float:
    """Seconds for the loss alone: anchor matching, the head's loss, and its backward."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    device = trainee.device
    sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=trainee.amp):
        losses = trainee.model.compute_loss(targets, leaves, anchors)
    torch.autograd.backward(torch.stack(list(losses.values())).sum())
    sync(device)
    return time.perf_counter() - t0


def run_case(
    case: Case, device: torch.device, args: argparse.Namespace, log: Callable[[str], None]
) -> Result:
    heads = {REFERENCE: "torchvision", OURS: "focal"}
    trainees = {
        name: Trainee(recipe(case, head), device, amp=args.amp, channels_last=args.channels_last)
        for name, head in heads.items()
    }
    for line in check(case, trainees[REFERENCE], trainees[OURS], device):
        log("check " + line)
    batches = [make_batch(case, device, seed=s) for s in range(args.batches)]
    for name, trainee in trainees.items():  # warm-up: allocator, kernels, optimiser state
        t = time_steps(trainee, batches, args.warmup, start=0)
        log(f"{case.name}: warm-up {name}: {args.warmup} steps {t:.1f} s")
    result = Result(
        seconds={n: [] for n in trainees},
        peak_bytes=dict.fromkeys(trainees),
        loss_seconds={n: [] for n in trainees},
    )
    for r in range(args.repeats):
        for name, trainee in trainees.items():  # A B A B ...
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time_steps(trainee, batches, args.steps, start=r * args.steps)
            result.seconds[name].append(t)
            if device.type == "cuda":
                result.peak_bytes[name] = torch.cuda.max_memory_allocated()
        log(
            f"{case.name}: round {r + 1}/{args.repeats}: "
            + ", ".join(f"{n} {result.seconds[n][-1]:.2f} s" for n in trainees)
        )
    loss_part = head_outputs(trainees[REFERENCE].model, batches[0])
    for r in range(args.loss_repeats + 1):  # round 0 is the warm-up
        for name, trainee in trainees.items():
            t = time_loss(trainee, *loss_part)
            if r > 0:
                result.loss_seconds[name].append(t)
    del trainees
    return result


def throughput(seconds: list[float], images: int) -> tuple[float, float, float]:
    """Median, min and max images per second."""
    rates = [images / s for s in seconds]
    return statistics.median(rates), min(rates), max(rates)


def table(rows: list[tuple[Case, Result]], args: argparse.Namespace, device: torch.device) -> str:
    precision = "fp16 AMP" if args.amp else "fp32"
    layout = "channels-last" if args.channels_last else "contiguous"
    out = [
        "| device | case | batch x size | precision | stock img/s | ours img/s "
        "| ratio (ours/stock) | stock peak MiB | ours peak MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, res in rows:
        images = case.batch * args.steps
        ref = throughput(res.seconds[REFERENCE], images)
        mine = throughput(res.seconds[OURS], images)

        def mib(name: str, r: Result = res) -> str:
            peak = r.peak_bytes[name]
            return "n/a" if peak is None else f"{peak / 2**20:.0f}"

        out.append(
            f"| {device.type} | {case.name} | {case.batch} x {case.height}x{case.width} "
            f"| {precision}, {layout} "
            f"| {ref[0]:.2f} [{ref[1]:.2f}-{ref[2]:.2f}] "
            f"| {mine[0]:.2f} [{mine[1]:.2f}-{mine[2]:.2f}] | {mine[0] / ref[0]:.2f}x "
            f"| {mib(REFERENCE)} | {mib(OURS)} |"
        )
    out += [
        "",
        "Loss alone (anchor matching + head.compute_loss + backward to the head outputs), "
        f"{args.loss_repeats} interleaved calls, median [min-max] ms:",
        "",
        "| device | case | stock ms | ours ms | ratio (stock/ours) |",
        "|---|---|---:|---:|---:|",
    ]
    for case, res in rows:
        ref_ms = [1e3 * s for s in res.loss_seconds[REFERENCE]]
        my_ms = [1e3 * s for s in res.loss_seconds[OURS]]
        ref_med, my_med = statistics.median(ref_ms), statistics.median(my_ms)
        out.append(
            f"| {device.type} | {case.name} "
            f"| {ref_med:.1f} [{min(ref_ms):.1f}-{max(ref_ms):.1f}] "
            f"| {my_med:.1f} [{min(my_ms):.1f}-{max(my_ms):.1f}] | {ref_med / my_med:.2f}x |"
        )
    return "\n".join(out)


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"device: {device.type} ({name}, {os.cpu_count()} logical CPUs), "
        f"torch.get_num_threads() = {torch.get_num_threads()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}; "
        f"load average now {load}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["bccd-r18", "r50-384"])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler (CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="model in channels_last")
    p.add_argument("--repeats", type=int, default=6, help="timed rounds per model")
    p.add_argument("--steps", type=int, default=1, help="training steps per timed round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    p.add_argument(
        "--loss-repeats", type=int, default=20, help="timed calls of the loss alone per model"
    )
    p.add_argument("--batches", type=int, default=3, help="distinct synthetic batches cycled")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {line}", flush=True)

    log(device_line(device))
    log(
        f"method: {args.warmup} warm-up steps per model, then {args.repeats} rounds of "
        f"{args.steps} steps, stock then ours (interleaved); median [min-max] img/s"
    )
    rows = [(CASES[name], run_case(CASES[name], device, args, log)) for name in args.cases]
    print()
    print(device_line(device))
    print(table(rows, args, device))
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
