"""Every GPU figure the project promises, in one command and one markdown report.

On a host with CUDA it checks the environment (GPU model and count, driver, CUDA and torch
versions), then runs, each as its own process with a time limit, and puts each one's command,
exit status, wall time and printed tables into the report:

1. ``bench/focal_loss.py --device cuda``: our focal loss fwd+bwd time and memory against
   torchvision's (goal >= 2x faster, <= 0.5x memory).
2. ``bench/train_step.py --device cuda --amp --channels-last``: the training step against the
   stock head with fp16 autocast and channels_last (goal >= 1.5x images/s), peak memory.
3. The BCCD training run (``configs/bccd_r18.yaml``, bf16 AMP, channels_last) with its wall
   time and test AP (needs ``--bccd``, default ``../shared/datasets/bccd``).
4. ``bench/inference.py --device cuda``: inference over HTTP, batching at concurrency 8 against
   none (goal > 1.5x).
5. With 2 GPUs or more: the BCCD recipe for 2 epochs under ``torchrun --nproc-per-node 2``
   (NCCL), wall time and validation AP.
6. ``bench/evaluate.py``: COCO evaluation, faster-coco-eval against pycocotools (CPU).
7. ``bench/eval_share.py --device cuda``: the trainer's validation on BCCD, one pass against
   the two it ran before, and its share of an epoch on the GPU.
8. ``bench/loader_epochs.py --workers 8``: the training loader with workers for the whole run
   against new workers every epoch, as the BCCD run reads it.

It is sized to fit in about 10 minutes on one H100/H200. On a machine without CUDA it says so,
writes nothing and exits 0: there is nothing to measure, and nothing is pretended.

    .venv/bin/python bench/gpu_proof.py [--out gpu_proof.md] [--only focal train_step ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "datasets" / "bccd"
PY = sys.executable


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    command: Callable[[argparse.Namespace, Path], list[str] | None]
    """The command line, or None when the step cannot run here (the reason is printed)."""
    timeout_s: int
    after: Callable[[Path], str] | None = None
    """What to add to the report from the step's folder once it succeeded."""


def _bccd_args(bccd: Path) -> list[str]:
    ann = bccd / "annotations"
    images = str(bccd / "images")
    return [
        "--data-train", str(ann / "instances_train.json"), images,
        "--data-val", str(ann / "instances_val.json"), images,
        "--data-test", str(ann / "instances_test.json"), images,
    ]  # fmt: skip


GPU_RECIPE = ["solver.amp=bf16", "solver.channels_last=true", "data.num_workers=8"]


def _train(args: argparse.Namespace, out: Path) -> list[str] | None:
    if not (args.bccd / "annotations" / "instances_train.json").is_file():
        print(f"  BCCD not found at {args.bccd}: step skipped")
        return None
    sets = [x for s in GPU_RECIPE for x in ("--set", s)]
    return [PY, "-m", "detector.cli", "train", "configs/bccd_r18.yaml", *_bccd_args(args.bccd),
            *sets, "--out", str(out / "run")]  # fmt: skip


def _ddp(args: argparse.Namespace, out: Path) -> list[str] | None:
    if torch.cuda.device_count() < 2:
        print(f"  {torch.cuda.device_count()} GPU: the 2-GPU DDP run needs 2; step skipped")
        return None
    if not (args.bccd / "annotations" / "instances_train.json").is_file():
        print(f"  BCCD not found at {args.bccd}: step skipped")
        return None
    torchrun = shutil.which("torchrun") or str(Path(PY).with_name("torchrun"))
    sets = [x for s in [*GPU_RECIPE, "solver.epochs=2", "solver.steps=[]"] for x in ("--set", s)]
    launch = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "detector.cli"]
    return [*launch, "train", "configs/bccd_r18.yaml", *_bccd_args(args.bccd), *sets,
            "--out", str(out / "run")]  # fmt: skip


def _inference(args: argparse.Namespace, out: Path) -> list[str] | None:
    command = [PY, "bench/inference.py", "--device", "cuda", "--rounds", "3", "--requests", "8"]
    # A real photograph when BCCD is here: the generated fallback is noise, a PNG that decodes
    # far slower than any camera's JPEG and so overstates the service's share.
    image = next(iter(sorted((args.bccd / "images").glob("*.jpg"))), None)
    return command if image is None else [*command, "--image", str(image)]


def _test_metrics(out: Path) -> str:
    path = out / "run" / "metrics_test.json"
    if not path.is_file():
        return "(no test metrics file)"
    summary = json.loads(path.read_text())["summary"]
    cells = " | ".join(
        "-" if summary.get(k) is None else f"{100 * summary[k]:.1f}"
        for k in ("AP", "AP50", "AP75", "AR100")
    )
    table = "| AP | AP50 | AP75 | AR100 |\n|---:|---:|---:|---:|"
    return f"Test split, percent:\n\n{table}\n| {cells} |\n"


STEPS = [
    Step("focal", "Focal loss, fwd+bwd (bench/focal_loss.py)",
         lambda a, o: [PY, "bench/focal_loss.py", "--device", "cuda", "--repeats", "5"], 120),
    Step("train_step", "Training step vs the stock head (bench/train_step.py)",
         lambda a, o: [PY, "bench/train_step.py", "--device", "cuda", "--amp", "--channels-last",
                       "--cases", "bccd-r18", "r50-384", "--repeats", "6", "--steps", "5"], 150),
    Step("bccd", "BCCD training run, bf16 AMP + channels_last", _train, 240, _test_metrics),
    Step("inference", "Inference over HTTP, batching (bench/inference.py)", _inference, 180),
    Step("ddp", "2-GPU DDP run (torchrun, NCCL)", _ddp, 150),
    Step("evaluate", "COCO evaluation backends (bench/evaluate.py, CPU)",
         lambda a, o: [PY, "bench/evaluate.py", "--cases", "bccd-val", "coco",
                       "--repeats", "2"], 300),
    Step("validation", "Validation's share of a BCCD epoch (bench/eval_share.py)",
         lambda a, o: [PY, "bench/eval_share.py", "--device", "cuda", "--size", "320",
                       "--repeats", "3", "--bccd", str(a.bccd)], 150),
    Step("loader", "Loader workers for the whole run (bench/loader_epochs.py)",
         lambda a, o: [PY, "bench/loader_epochs.py", "--workers", "8", "--epochs", "4",
                       "--bccd", str(a.bccd)], 120),
]  # fmt: skip


def environment() -> list[str]:
    """Lines describing the host: GPUs, driver, CUDA, torch, CPU."""
    lines = [f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"- GPU {i}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, check=False).stdout
        lines.append(f"- Driver: {driver.strip().splitlines()[0] if driver.strip() else '?'}")
    cudnn = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
    lines.append(
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn}), "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    return lines


def run_step(step: Step, args: argparse.Namespace, folder: Path) -> list[str]:
    """Run one step; its section of the report."""
    print(f"== {step.title}", flush=True)
    section = [f"## {step.title}", ""]
    command = step.command(args, folder)
    if command is None:
        return [*section, "Skipped on this host (see the console).", ""]
    shown = " ".join(command).replace(str(REPO) + "/", "").replace(PY, "python")
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=step.timeout_s, check=False
        )
        status, output = f"exit {done.returncode}", done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"stopped after its {step.timeout_s} s limit"
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
    wall = time.monotonic() - start
    print(f"   {status}, {wall:.0f} s", flush=True)
    section += [f"- Command: `{shown}`", f"- Result: {status}, wall time {wall:.0f} s", ""]
    tail = "\n".join(output.strip().splitlines()[-60:])
    section += ["```", tail, "```", ""]
    if step.after is not None and status == "exit 0":
        section += [step.after(folder), ""]
    return section


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "gpu_proof.md", help="the report")
    p.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], default=None)
    p.add_argument("--bccd", type=Path, default=BCCD)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(
            "No CUDA device on this host (torch.cuda.is_available() is False): the GPU figures "
            "cannot be measured here. Nothing was run and no report was written."
        )
        return 0
    report = ["# GPU proof", "", *environment(), ""]
    print("\n".join(report), flush=True)
    steps = [s for s in STEPS if args.only is None or s.name in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps:
            folder = Path(tmp) / step.name
            folder.mkdir()
            report += run_step(step, args, folder)
            args.out.write_text("\n".join(report))  # a partial report survives a stop
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
