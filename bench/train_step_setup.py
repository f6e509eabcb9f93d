"""What bench/train_step.py times: the cases, their recipes and batches, and a trainee (a model
with its optimiser and scaler stepping as the trainer does). Kept apart so the benchmark script
holds the check, the timing and the report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the package from the repo
    sys.path.insert(0, str(REPO))

from detector.config import TrainConfig  # noqa: E402
from detector.engine.optim import build_optimizer  # noqa: E402
from detector.model.build import build_model  # noqa: E402
from detector.recipe import load_recipe  # noqa: E402

NUM_CLASSES = 3
REFERENCE = "stock"
OURS = "ours"
Images = list[Tensor]
Targets = list[dict[str, Tensor]]
Batch = tuple[Images, Targets]


@dataclass(frozen=True)
class Case:
    name: str
    recipe: str
    overrides: tuple[str, ...]
    batch: int
    height: int
    width: int


CASES = {
    # BCCD as trained by configs/bccd_r18.yaml: 640x480 photos resized to 320x427.
    "bccd-r18": Case("bccd-r18", "configs/bccd_r18.yaml", (), 8, 320, 427),
    # The paper's R50-FPN (256 channels, frozen BN, 3 trainable stages) at a larger size.
    "r50-384": Case(
        "r50-384",
        "configs/bccd_r18.yaml",
        (
            "model.backbone=resnet50",
            "model.norm=frozen_bn",
            "model.trainable_backbone_layers=3",
            "model.fpn_channels=256",
            "model.anchor_sizes=[32,64,128,256,512]",
        ),
        2,
        384,
        512,
    ),
}


def recipe(case: Case, head: str) -> TrainConfig:
    """The case's recipe with the stock head's shape and loss, and ``model.head=head``."""
    base = load_recipe(REPO / case.recipe, case.overrides)
    channels = base.model.fpn_channels
    return load_recipe(
        REPO / case.recipe,
        (
            *case.overrides,
            f"model.head={head}",
            "model.head_convs=4",
            f"model.head_channels={channels}",
            "loss.box=l1",
        ),
    )


def make_batch(case: Case, device: torch.device, seed: int, *, same_image: bool = False) -> Batch:
    """``case.batch`` noise images in [0, 1] with 10-20 boxes each (or one image repeated)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = case.height, case.width
    images: Images = []
    targets: Targets = []
    for _ in range(1 if same_image else case.batch):
        count = int(torch.randint(10, 21, (1,), generator=gen))
        side = 16 + torch.rand(count, 2, generator=gen) * 112  # 16-128 px
        x0 = torch.rand(count, generator=gen) * (w - side[:, 0])
        y0 = torch.rand(count, generator=gen) * (h - side[:, 1])
        boxes = torch.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], dim=1)
        labels = torch.randint(NUM_CLASSES, (count,), generator=gen)
        images.append(torch.rand(3, h, w, generator=gen).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    if same_image:
        images = images * case.batch
        targets = targets * case.batch
    return images, targets


class Trainee:
    """A model, its optimiser and scaler: one training step at a time, as the trainer does."""

    def __init__(
        self, cfg: TrainConfig, device: torch.device, *, amp: bool, channels_last: bool
    ) -> None:
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, cfg.loss, num_classes=NUM_CLASSES).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.device = device
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        images, targets = batch
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            losses: dict[str, Tensor] = self.model(images, targets)
        return losses

    def step(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = sum(self.losses(batch).values(), torch.zeros((), device=self.device))
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
