"""The training step on the CPU: our RetinaNet in fp32 (the reference) against channels_last,
bf16 autocast (oneDNN; AMX or AVX-512 BF16 where the CPU has them) and ``torch.compile`` of the
dense network (backbone, FPN, head towers), side by side, in one run.

Every variant starts from the same weights and steps on the same batches (the cases of
``bench/train_step.py``: BCCD as ``configs/bccd_r18.yaml`` trains it, 8 images at 320x427 with
10-20 boxes each). Checked before timing: the first step's losses of every variant against fp32
(bf16 within 5 %, the others 1e-3), then ``--learn-steps`` steps on one batch at 5 % of the
recipe's lr (as early in its warm-up), where the summed loss must fall as far as fp32's does
(to within 10 % of fp32's drop): a variant that is fast but does not train is reported as such
and not timed.

Timing: ``--warmup`` untimed steps per variant (``torch.compile`` compiles in them), then
``--repeats`` rounds, each timing ``--steps`` steps of every variant in turn (A B C ... A B C);
img/s = batch x steps / seconds; median [min-max] over rounds; ratio = variant / fp32.

    .venv/bin/python bench/cpu_train_step.py [--case bccd-r18] [--variants fp32 bf16 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from train_step_setup import CASES, REPO, Batch, Case, make_batch

from detector.config import TrainConfig
from detector.device import native_bf16
from detector.engine.optim import build_optimizer
from detector.model.build import build_model
from detector.recipe import load_recipe

NUM_CLASSES = 3
CHECK_LR_SCALE = 0.05


@dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("fp32"),
        Variant("channels_last", channels_last=True),
        Variant("bf16", bf16=True),
        Variant("bf16+channels_last", channels_last=True, bf16=True),
        Variant("compile", compile=True),
        Variant("compile+bf16", compile=True, bf16=True),
    )
}


class Trainee:
    """Our model, its optimiser, and one training step in the variant's numerics."""

    def __init__(
        self, cfg: TrainConfig, state: dict[str, Tensor], variant: Variant, *, lr_scale: float = 1
    ) -> None:
        self.variant = variant
        self.model = build_model(cfg.model, cfg.loss, num_classes=NUM_CLASSES)
        self.model.load_state_dict(copy.deepcopy(state))
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if variant.compile:
            # The dense part only: anchors, matching and the loss are data-dependent Python.
            self.model.backbone = torch.compile(self.model.backbone, dynamic=False)
            self.model.head.classification_head.conv = torch.compile(
                self.model.head.classification_head.conv, dynamic=False
            )
            self.model.head.regression_head.conv = torch.compile(
                self.model.head.regression_head.conv, dynamic=False
            )
        self.model.train()
        solver = cfg.solver.model_copy(update={"lr": cfg.solver.lr * lr_scale})
        self.optimizer = build_optimizer(self.model, solver)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.variant.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        images, targets = batch
        with self._autocast():
            out: dict[str, Tensor] = self.model(images, targets)
        return {k: v.float() for k, v in out.items()}

    def step(self, batch: Batch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = sum(self.losses(batch).values(), torch.zeros(()))
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return float(loss.detach())


def check(trainees: dict[str, Trainee], batch: Batch, learn_steps: int) -> dict[str, str]:
    """First-step losses against fp32, then whether each variant learns as fp32 does."""
    verdicts: dict[str, str] = {}
    with torch.no_grad():
        first = {name: t.losses(batch) for name, t in trainees.items()}
    drops: dict[str, float] = {}
    for name, trainee in trainees.items():
        start = end = trainee.step(batch)
        for _ in range(learn_steps - 1):
            end = trainee.step(batch)
        drops[name] = start - end
    for name in trainees:
        tol = 0.05 if trainees[name].variant.bf16 else 1e-3
        worst = max(
            abs(float(first[name][k]) - float(first["fp32"][k])) / abs(float(first["fp32"][k]))
            for k in first["fp32"]
        )
        learns = drops[name] >= 0.9 * drops["fp32"]
        ok = worst <= tol and learns
        verdicts[name] = (
            f"{'ok' if ok else 'FAILED'}: first-step losses within {worst:.1e} of fp32 "
            f"(tol {tol:g}); loss drop over {learn_steps} steps {drops[name]:.3f} "
            f"(fp32 {drops['fp32']:.3f})"
        )
    return verdicts


def timed_rounds(
    trainees: dict[str, Trainee], batches: list[Batch], *, steps: int, repeats: int
) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in trainees}
    cycle = _cycle(batches)
    for _ in range(repeats):
        for name, trainee in trainees.items():
            start = time.perf_counter()
            for _ in range(steps):
                trainee.step(next(cycle))
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _cycle(batches: list[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES), default="bccd-r18")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--learn-steps", type=int, default=8, help="at least 2")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    case: Case = CASES[args.case]
    cfg = load_recipe(REPO / case.recipe, case.overrides)  # the recipe as users train it
    torch.manual_seed(cfg.seed)
    state = build_model(cfg.model, cfg.loss, num_classes=NUM_CLASSES).state_dict()
    names = ["fp32", *[v for v in args.variants if v != "fp32"]]
    cpu = torch.device("cpu")
    batches = [make_batch(case, cpu, seed) for seed in range(3)]
    print(
        f"# CPU training step: {case.name} ({case.batch} x {case.height}x{case.width}), "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, cores {os.cpu_count()}, kernels "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16 (oneDNN) "
        f"{'yes' if native_bf16(cpu) else 'no (emulated: slow)'}",
        flush=True,
    )
    print("check (fresh copies of the same weights):", flush=True)
    # At the recipe's full lr a fresh model's loss first rises (the trainer warms up for that).
    checked = {n: Trainee(cfg, state, VARIANTS[n], lr_scale=CHECK_LR_SCALE) for n in names}
    verdicts = check(checked, batches[0], args.learn_steps)
    for name in names:
        print(f"  {name}: {verdicts[name]}", flush=True)
    good = [n for n in names if verdicts[n].startswith("ok")]
    if "fp32" not in good:
        print("fp32 itself did not learn on the check batch: nothing to compare against")
        return 1
    print("warm-up (compiles where asked):", flush=True)
    trainees = {n: Trainee(cfg, state, VARIANTS[n]) for n in good}
    for name, trainee in trainees.items():
        start = time.perf_counter()
        for batch in batches[: args.warmup]:
            trainee.step(batch)
        print(f"  {name}: {time.perf_counter() - start:.1f} s", flush=True)
    seconds = timed_rounds(trainees, batches, steps=args.steps, repeats=args.repeats)
    fp32 = statistics.median(seconds["fp32"])
    print("\n| variant | img/s median [min-max] | vs fp32 |\n|---|---|---|")
    for name in good:
        rates = [case.batch * args.steps / s for s in seconds[name]]
        med = statistics.median(rates)
        print(
            f"| {name} | {med:.2f} [{min(rates):.2f}-{max(rates):.2f}] | "
            f"{fp32 / statistics.median(seconds[name]):.2f}x |"
        )
    for name in names:
        if name not in good:
            print(f"| {name} | not timed: {verdicts[name]} | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
