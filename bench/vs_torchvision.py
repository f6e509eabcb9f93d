"""Plain torchvision RetinaNet against ours: same split, same budget, one evaluator.

What a torchvision user runs: ``torchvision.models.detection.RetinaNet`` with its stock head
(per-image loss normalisation) and its own ``GeneralizedRCNNTransform`` (resize to
``--min-size``/``--max-size``, normalise), a ResNet FPN from ``_resnet_fpn_extractor`` (P3-P7,
P6 from P5), random horizontal flips, SGD (momentum 0.9, weight decay 1e-4) with a linear
warm-up and a cosine decay, trained twice: with its focal loss (alpha 0.25, gamma 2) and with
the paper's alpha-balanced CE (gamma 0, alpha 0.75). Nothing of ours but reading the dataset.
Ours: ``fit`` on ``--recipe`` with the same epochs, batch size, image size, backbone, seed and
device (its own head, loss, optimiser and augmentation: the recipe is what is compared).

All three are scored by the same evaluator (:func:`detector.evaluate.coco.score_detections`)
on the test split, in original pixels. Printed: AP, AP50, AP75, per-class AP, AR100, the
number of test detections, training wall time and training images/s, with the device and
thread count; the torchvision runs also print their mean losses after each epoch, and one
whose loss stops being finite stops there and is named under the table. Our wall time
includes its validation passes (which pick the checkpoint scored); the torchvision runs are
scored as they end. Their SGD rate is torchvision's reference one (0.01 at batch 16) scaled
linearly to ``--batch-size`` unless ``--lr`` is given.

    .venv/bin/python bench/vs_torchvision.py --data-train ANN IMG --data-val ANN IMG \\
        --data-test ANN IMG [--recipe configs/bccd_r18.yaml] [--epochs 8] [--batch-size 4] \\
        [--min-size 320] [--max-size 427] [--lr LR] [--device cuda --amp] [--out DIR] \\
        [--only torchvision-focal torchvision-ce ours]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the package from the repo
    sys.path.insert(0, str(REPO))

from detector.config import TrainConfig  # noqa: E402
from detector.data.coco import CocoDetection  # noqa: E402
from detector.engine.checkpoint import final_checkpoint  # noqa: E402
from detector.engine.trainer import fit  # noqa: E402
from detector.evaluate.coco import CocoMetrics, Detection, score_detections  # noqa: E402
from detector.predict import Predictor  # noqa: E402
from detector.recipe import load_recipe  # noqa: E402

RUNS = ("torchvision-focal", "torchvision-ce", "ours")


@dataclass(frozen=True)
class Outcome:
    name: str
    metrics: CocoMetrics
    train_s: float
    images_seen: int
    diverged: str | None = None  # where the loss stopped being finite; training stopped there


class AlphaBalancedHead(RetinaNetClassificationHead):
    """torchvision's classification head and its per-image loop, with its loss's fixed
    alpha 0.25 / gamma 2 made parameters (gamma 0 is the alpha-balanced CE)."""

    def __init__(self, *args: int, alpha: float, gamma: float) -> None:
        super().__init__(*args)
        self.alpha, self.gamma = alpha, gamma

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        losses = []
        for target, logits, matched in zip(
            targets, head_outputs["cls_logits"], matched_idxs, strict=True
        ):
            foreground = matched >= 0
            gt = torch.zeros_like(logits)
            gt[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], gt[valid], self.alpha, self.gamma, "sum")
            losses.append(loss / max(1, int(foreground.sum())))
        return torch.stack(losses).sum() / len(targets)


def torchvision_model(args: argparse.Namespace, num_classes: int, *, alpha_ce: bool) -> RetinaNet:
    body = getattr(torchvision.models, args.backbone)(weights=None)
    backbone = _resnet_fpn_extractor(
        body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    model = RetinaNet(backbone, num_classes, min_size=args.min_size, max_size=args.max_size)
    if alpha_ce:
        stock = model.head.classification_head
        head = AlphaBalancedHead(256, stock.num_anchors, num_classes, alpha=0.75, gamma=0.0)
        model.head.classification_head = head
    return model


def _loader(
    dataset: CocoDetection, batch: int, seed: int
) -> DataLoader[tuple[Tensor, dict[str, Tensor]]]:
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda items: tuple(zip(*items, strict=True)),
        generator=torch.Generator().manual_seed(seed),
        num_workers=2,
    )


def train_torchvision(
    model: RetinaNet, args: argparse.Namespace, train: CocoDetection, *, name: str
) -> tuple[float, int, str | None]:
    """Train ``model`` in place; prints each epoch's mean losses. Returns the wall time, the
    images seen and, when the loss stopped being finite, where (training stops there: a NaN
    model scores nothing, and the table must say why rather than show a bare zero)."""
    device = torch.device(args.device)
    model.to(device).train()
    loader = _loader(train, args.batch_size, args.seed)
    total: int = args.epochs * len(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=torchvision_lr(args), momentum=0.9, weight_decay=1e-4)
    warmup = min(500, max(1, total // 10))

    def factor(it: int) -> float:
        if it < warmup:
            return 0.001 + (1 - 0.001) * it / warmup
        return float(0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(enabled=args.amp and device.type == "cuda")
    seen, start = 0, time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        sums: dict[str, float] = {}
        for images, targets in loader:
            images_d = [im.to(device) for im in images]
            targets_d = [
                {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets
            ]
            with torch.autocast(device.type, enabled=args.amp and device.type == "cuda"):
                losses = model(images_d, targets_d)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                _sync(device)
                where = f"non-finite loss at epoch {epoch}, iteration {scheduler.last_epoch + 1}"
                print(f"{name}: {where}; stopped", flush=True)
                return time.perf_counter() - start, seen, where
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(images)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        means = ", ".join(f"{k} {v / len(loader):.4f}" for k, v in sums.items())
        print(f"{name} epoch {epoch}: {means}", flush=True)
    _sync(device)
    return time.perf_counter() - start, seen, None


@torch.no_grad()
def evaluate_torchvision(
    model: RetinaNet, test: CocoDetection, device: torch.device
) -> CocoMetrics:
    model.eval()
    return score_detections(test.coco, list(_detections(model, test, device)))


def _detections(model: RetinaNet, test: CocoDetection, device: torch.device) -> Iterator[Detection]:
    for index in range(len(test)):
        image, target = test[index]
        (out,) = model([image.to(device)])  # GeneralizedRCNNTransform maps boxes back
        for box, score, label in zip(
            out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
        ):
            yield Detection(
                image_id=int(target["image_id"]),
                category_id=test.category_ids[label],
                bbox=(box[0], box[1], box[2] - box[0], box[3] - box[1]),
                score=score,
            )


def run_ours(args: argparse.Namespace, out: Path) -> Outcome:
    cfg = ours_recipe(args)
    start = time.perf_counter()
    result = fit(cfg, out)
    train_s = time.perf_counter() - start
    assert cfg.data.test is not None
    predictor = Predictor.load(final_checkpoint(out), device=args.device)
    metrics = predictor.evaluate(cfg.data.test.annotations, cfg.data.test.images)
    return Outcome("ours", metrics, train_s, result.iterations * cfg.solver.batch_size)


def ours_recipe(args: argparse.Namespace) -> TrainConfig:
    """``--recipe`` with this run's budget, sizes, backbone, seed, device and splits."""
    own = load_recipe(args.recipe)
    # The recipe's LR drops are in its own epochs: keep those that fall inside this budget.
    steps = [s for s in own.solver.steps if s < args.epochs] if own.solver.epochs else []
    sets = [
        f"solver.epochs={args.epochs}",
        "solver.max_iters=null",
        f"solver.steps={steps}",
        f"solver.batch_size={args.batch_size}",
        f"data.train_min_sizes=[{args.min_size}]",
        f"data.eval_min_size={args.min_size}",
        f"data.max_size={args.max_size}",
        f"model.backbone={args.backbone}",
        f"seed={args.seed}",
        f"device={args.device}",
        f"solver.amp={'fp16' if args.amp else repr('off')}",  # bare off is YAML's false
        "early_stopping=null",
    ]
    for split in ("train", "val", "test"):
        ann, images = getattr(args, f"data_{split}")
        sets += [f"data.{split}.annotations={ann}", f"data.{split}.images={images}"]
    return load_recipe(args.recipe, sets)


def run_torchvision(
    args: argparse.Namespace, name: str, train: CocoDetection, test: CocoDetection
) -> Outcome:
    torch.manual_seed(args.seed)
    model = torchvision_model(args, train.num_classes, alpha_ce=name == "torchvision-ce")
    train_s, seen, diverged = train_torchvision(model, args, train, name=name)
    metrics = evaluate_torchvision(model, test, torch.device(args.device))
    return Outcome(name, metrics, train_s, seen, diverged)


def torchvision_lr(args: argparse.Namespace) -> float:
    """``--lr``, else torchvision's reference rate (0.01 at 16 images a batch) scaled linearly
    to the batch: its recipe is tuned there, and 0.01 at batch 4 diverged on BCCD."""
    return float(args.lr) if args.lr is not None else 0.01 * args.batch_size / 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def print_table(outcomes: Sequence[Outcome]) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    names = [c.name for c in outcomes[0].metrics.per_class]
    header = [
        "run", "AP", "AP50", "AP75", *(f"AP/{n}" for n in names), "AR100", "dets", "train s",
        "img/s",
    ]  # fmt: skip
    rows = [
        [
            o.name,
            *(pct(o.metrics.value(k)) for k in ("AP", "AP50", "AP75")),
            *(pct(o.metrics.value(f"AP/{n}")) for n in names),
            pct(o.metrics.value("AR100")),
            str(o.metrics.num_detections),
            f"{o.train_s:.0f}",
            f"{o.images_seen / o.train_s:.1f}",
        ]
        for o in outcomes
    ]
    diverged = [f"{o.name}: {o.diverged}" for o in outcomes if o.diverged]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for line in diverged:
        print(f"diverged, scored as it stood: {line}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    for split in ("train", "val", "test"):
        p.add_argument(
            f"--data-{split}", nargs=2, type=Path, required=True, metavar=("ANN", "IMAGES")
        )
    p.add_argument("--recipe", type=Path, default=REPO / "configs" / "bccd_r18.yaml")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--min-size", type=int, default=320)
    p.add_argument("--max-size", type=int, default=427)
    p.add_argument(
        "--backbone", default="resnet18", choices=("resnet18", "resnet34", "resnet50", "resnet101")
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="torchvision runs' SGD learning rate (default: 0.01 x batch size / 16)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA")
    p.add_argument("--only", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument(
        "--out", type=Path, default=None, help="our run's folder (default: a temporary one)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(
        f"device {device} ({gpu}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {platform.processor() or platform.machine()}"
    )
    print(
        f"budget: {args.epochs} epochs, batch {args.batch_size}, "
        f"{args.min_size}-{args.max_size} px, {args.backbone} from scratch, seed {args.seed}, "
        f"torchvision SGD lr {torchvision_lr(args):g}" + (", AMP fp16" if args.amp else "")
    )
    flip = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True)])
    train = CocoDetection.from_files(*args.data_train, transforms=flip)
    test = CocoDetection.from_files(*args.data_test)
    outcomes = []
    for name in args.only:
        if name == "ours":
            with tempfile.TemporaryDirectory() as tmp:
                outcomes.append(run_ours(args, args.out or Path(tmp)))
        else:
            outcomes.append(run_torchvision(args, name, train, test))
        print(f"{name}: done in {outcomes[-1].train_s:.0f} s", flush=True)
    print(f"\ntest split: {len(test)} images")
    print_table(outcomes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
