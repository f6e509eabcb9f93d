"""Sigmoid focal loss: ours (eager and compiled) against torchvision's, side by side.

Times forward + backward (``reduction="sum"`` then ``.backward()``) on RetinaNet-sized inputs
(rows = batch x anchors, K classes, ~5% of rows with one positive class) and measures the peak
memory of each case. Before timing, every case of ours must give torchvision's loss (rtol 1e-5)
and gradient (rtol 1e-5, atol 1e-6 x the largest gradient); otherwise the script exits non-zero.

Timing: one warm-up round, then ``--repeats`` rounds, each running torchvision, ours eager and
ours compiled once, interleaved; median and [min-max] per case; ratio = torchvision / ours.
Compile time (the first compiled call, forward + backward) is reported apart, not timed.

Peak memory is the memory a case adds on top of its inputs during one forward + backward (the
gradient included). CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``. CPU: the peak-RSS increase (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) in a fresh subprocess per case, after a warm-up call, with glibc
returning every freed block of 64 KiB or more to the OS (``MALLOC_MMAP_THRESHOLD_``) so that
freed memory cannot hide the next peak. (tracemalloc does not see torch's allocations.)

    .venv/bin/python bench/focal_loss.py [--repeats 5] [--rows 960000] [--classes 80 3]
                                         [--device cpu cuda]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the package from the repo
    sys.path.insert(0, str(REPO))

from detector.model.losses import compiled, sigmoid_focal_loss  # noqa: E402

ALPHA = 0.25
GAMMA = 2.0
POSITIVE_ROWS = 0.05
REFERENCE = "torchvision"
OURS = ("ours eager", "ours compiled")
LossFn = Callable[..., Tensor]
MiB = 2**20


def torchvision_focal(
    logits: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str
) -> Tensor:
    loss: Tensor = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    return loss


def make_inputs(rows: int, classes: int, device: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """float[rows, K] standard-normal logits and one-hot targets on ~5% of the rows."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen)
    targets = torch.zeros(rows, classes)
    positive = (torch.rand(rows, generator=gen) < POSITIVE_ROWS).nonzero().squeeze(1)
    targets[positive, torch.randint(classes, (positive.numel(),), generator=gen)] = 1.0
    return logits.to(device), targets.to(device)


def forward_backward(fn: LossFn, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    x = logits.detach().requires_grad_(True)
    loss = fn(x, targets, ALPHA, GAMMA, "sum")
    torch.autograd.backward(loss)
    assert x.grad is not None
    return loss.detach(), x.grad


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: LossFn, logits: Tensor, targets: Tensor, device: str) -> float:
    """Seconds for one forward + backward; the results are dropped before returning."""
    sync(device)
    start = time.perf_counter()
    forward_backward(fn, logits, targets)
    sync(device)
    return time.perf_counter() - start


def check_same(name: str, ours: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor]) -> str:
    """Raise SystemExit unless ours matches the reference; return a one-line summary."""
    (loss, grad), (ref_loss, ref_grad) = ours, ref
    scale = ref_grad.abs().max().item()
    try:
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0.0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6 * scale)
    except AssertionError as exc:
        raise SystemExit(f"{name} does not compute torchvision's loss:\n{exc}") from exc
    loss_rel = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
    grad_rel = (grad - ref_grad).abs().max().item() / scale
    return f"{name}: loss rel. diff {loss_rel:.1e}, max grad diff / max |grad| {grad_rel:.1e}"


# --- peak memory --------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cpu_peak_in_this_process(case: str, rows: int, classes: int, seed: int) -> int:
    """Bytes of peak RSS one forward + backward adds on top of the inputs (subprocess side)."""
    logits, targets = make_inputs(rows, classes, "cpu", seed)
    fn = build_cases()[case]
    forward_backward(fn, logits, targets)  # warm-up: compiles, loads kernels, first touches
    gc.collect()
    baseline = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to VmRSS
    forward_backward(fn, logits, targets)
    return (_proc_status_kib("VmHWM") - baseline) * 1024


def cpu_peak(case: str, rows: int, classes: int, seed: int) -> int:
    """Run :func:`cpu_peak_in_this_process` in a fresh interpreter; return its bytes."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    argv = [sys.executable, str(Path(__file__).resolve()), "--memory-case", case]
    argv += ["--rows", str(rows), "--classes", str(classes), "--seed", str(seed)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess for {case!r} failed:\n{out.stderr[-2000:]}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def cuda_peak(fn: LossFn, logits: Tensor, targets: Tensor) -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    forward_backward(fn, logits, targets)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


# --- the benchmark ------------------------------------------------------------------------


def build_cases() -> dict[str, LossFn]:
    return {
        REFERENCE: torchvision_focal,
        "ours eager": sigmoid_focal_loss,
        "ours compiled": compiled(sigmoid_focal_loss),
    }


@dataclass
class Row:
    case: str
    classes: int
    ref_s: list[float]
    ours_s: list[float]
    ref_peak: int
    ours_peak: int


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    return "cpu"


def bench_device(args: argparse.Namespace, device: str, notes: list[str]) -> list[Row]:
    rows_out: list[Row] = []
    cases = build_cases()
    for classes in args.classes:
        logits, targets = make_inputs(args.rows, classes, device, args.seed)
        # Correctness first; these calls are also the first warm-up of each case.
        ref = forward_backward(cases[REFERENCE], logits, targets)
        results: dict[str, tuple[Tensor, Tensor]] = {}
        first_s: dict[str, float] = {}
        fell_back = False
        for name in OURS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sync(device)
                start = time.perf_counter()
                results[name] = forward_backward(cases[name], logits, targets)
                sync(device)
                first_s[name] = time.perf_counter() - start
            fell_back |= any("torch.compile failed" in str(w.message) for w in caught)
        notes.append(
            f"K={classes}: first compiled call (compile + one run, fwd+bwd) "
            f"{first_s['ours compiled']:.1f} s" + (" (FELL BACK TO EAGER)" if fell_back else "")
        )
        for name in OURS:
            notes.append(f"K={classes}: check {check_same(name, results[name], ref)}")
        del ref, results

        names = [REFERENCE, *OURS]
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.warmup + args.repeats):
            for name in names:  # interleaved: A B C A B C ...
                elapsed = timed(cases[name], logits, targets, device)
                if round_ >= args.warmup:
                    times[name].append(elapsed)

        if device == "cuda":
            peaks = {name: cuda_peak(cases[name], logits, targets) for name in names}
        else:
            del logits, targets  # the subprocesses need the memory more than we do
            gc.collect()
            peaks = {name: cpu_peak(name, args.rows, classes, args.seed) for name in names}
        for name in OURS:
            rows_out.append(
                Row(name, classes, times[REFERENCE], times[name], peaks[REFERENCE], peaks[name])
            )
    return rows_out


def fmt_ms(samples: list[float]) -> str:
    ms = [s * 1e3 for s in samples]
    return f"{statistics.median(ms):.1f} [{min(ms):.1f}-{max(ms):.1f}]"


def table(device: str, rows: list[Row]) -> str:
    lines = [
        f"| device | case | K | {REFERENCE} ms | ours ms | ratio (ref/ours) "
        f"| {REFERENCE} peak MiB | ours peak MiB | memory (ours/ref) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = statistics.median(r.ref_s) / statistics.median(r.ours_s)
        mem = r.ours_peak / r.ref_peak if r.ref_peak > 0 else float("nan")
        lines.append(
            f"| {device} | {r.case} | {r.classes} | {fmt_ms(r.ref_s)} | {fmt_ms(r.ours_s)} "
            f"| {ratio:.2f}x | {r.ref_peak / MiB:.0f} | {r.ours_peak / MiB:.0f} | {mem:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--rows", type=int, default=8 * 120_000, help="batch x anchors")
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 3], help="K values")
    parser.add_argument(
        "--device",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
        help="default: cpu, and cuda when available",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile-cache",
        choices=["fresh", "user"],
        default="fresh",
        help="Inductor cache for the compile time: a fresh temporary one (default) or yours",
    )
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: subprocess mode
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_case is not None:
        (classes,) = args.classes
        peak = cpu_peak_in_this_process(args.memory_case, args.rows, classes, args.seed)
        print(json.dumps({"peak_bytes": peak}))
        return
    if "cuda" in args.device and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")

    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        if args.compile_cache == "fresh":  # read lazily by Inductor; inherited by subprocesses
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        start = time.perf_counter()
        print("# Sigmoid focal loss, forward + backward")
        print(
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"torch.get_num_threads() = {torch.get_num_threads()}"
        )
        print(
            f'rows = {args.rows}, K = {args.classes}, reduction="sum", alpha = {ALPHA}, '
            f"gamma = {GAMMA}, {POSITIVE_ROWS:.0%} of rows with one positive class"
        )
        print(
            f"{args.warmup} warm-up + {args.repeats} timed rounds, interleaved "
            f"({REFERENCE}, {', '.join(OURS)}); ms = median [min-max]"
        )
        print(
            "peak memory = added on top of the inputs by one forward + backward (gradient "
            "included); cpu: peak-RSS (VmHWM) increase in a fresh subprocess per case; "
            "cuda: torch.cuda.max_memory_allocated"
        )
        for device in args.device:
            notes: list[str] = []
            rows = bench_device(args, device, notes)
            print(f"\n## {device_name(device)}")
            for note in notes:
                print(f"- {note}")
            print()
            print(table(device, rows))
        maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        total_s = time.perf_counter() - start
        print(f"\ntotal {total_s:.0f} s, max RSS of this process {maxrss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
