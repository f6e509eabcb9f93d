"""TensorBoard event files of a run, written with ``torch.utils.tensorboard``.

Every step: ``train/<term>``, ``train/loss``, ``train/lr``, ``train/images_per_s``. Every
epoch: ``val/<term>``, ``val/loss`` and, when evaluated, ``coco/<key>`` (the 12 numbers),
``class/<key>/<class>``, the PR curves as an image (``pr_curves``: TensorBoard's own PR plugin
wants raw scores and labels; COCO gives interpolated precision at fixed recall points) and a
few validation images (``val_images/<i>``: true boxes left, predictions right). Once: the
resolved recipe (text). The step axis is the iteration everywhere; a resumed run purges what
a killed attempt wrote past its checkpoint, so the curves have one value per step.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import draw_bounding_boxes

from detector.config import TrainConfig
from detector.data.coco import CocoDetection
from detector.draw import draw
from detector.engine.callbacks import Callback, EpochEvent, StepEvent, Trainer
from detector.engine.tracking_history import validation_scalars
from detector.evaluate.coco import CocoMetrics
from detector.plots import pr_figure, render_rgb
from detector.predict import DetectionOut

TENSORBOARD_DIR = "tensorboard"
DEFAULT_SCORE = 0.5
"""Score threshold of the drawn predictions of a class without a best-F1 threshold."""
_TRUTH_COLOR = "#ffffff"


def tensorboard_dir(workdir: Path) -> Path:
    """Where a run's event files are (``tensorboard --logdir`` it, or a folder above)."""
    return workdir / TENSORBOARD_DIR


class TensorBoardWriter(Callback):
    """Writes the run's event files; rank 0 only (the trainer runs callbacks there)."""

    def __init__(
        self,
        *,
        workdir: Path,
        cfg: TrainConfig,
        model: nn.Module,
        val_set: CocoDetection | None,
        device: torch.device,
    ) -> None:
        self.log_dir = tensorboard_dir(workdir)
        self.cfg = cfg
        self.model = model
        self.val_set = val_set
        self.device = device
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        step = trainer.state.iteration
        # purge_step: TensorBoard drops what earlier files hold at or past it (a killed attempt).
        self.writer = SummaryWriter(
            log_dir=str(self.log_dir), purge_step=step if step > 0 else None, flush_secs=30
        )
        recipe = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
        # The text plugin renders markdown: indented, the YAML shows as a code block.
        self.writer.add_text("recipe", "    " + recipe.replace("\n", "\n    "), step)

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        assert self.writer is not None
        step = event.iteration
        for name, value in event.losses.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/loss", sum(event.losses.values()), step)
        self.writer.add_scalar("train/lr", event.lr, step)
        self.writer.add_scalar("train/images_per_s", event.images_per_s, step)

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        assert self.writer is not None
        step = event.iteration
        for name, value in validation_scalars(event.val_losses, event.metrics).items():
            self.writer.add_scalar(name, value, step)
        if event.metrics is not None:
            image = render_rgb(pr_figure(event.metrics))
            self.writer.add_image("pr_curves", image, step, dataformats="HWC")
            self._add_val_images(event.metrics, step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @torch.no_grad()
    def _add_val_images(self, metrics: CocoMetrics, step: int) -> None:
        """The first ``tracking.images`` validation images: true boxes | predicted boxes
        (each class's best-F1 threshold, else :data:`DEFAULT_SCORE`)."""
        if self.val_set is None or self.cfg.tracking.images == 0:
            return
        assert self.writer is not None
        thresholds = {
            c.category_id: c.best_f1_threshold or DEFAULT_SCORE for c in metrics.per_class
        }
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(min(self.cfg.tracking.images, len(self.val_set))):
                image, target = self.val_set[i]
                output = self.model([image.to(self.device)])[0]
                pixels = (image.clamp(0, 1) * 255).to(torch.uint8)
                truth = self._draw_truth(pixels, target)
                predicted = draw(pixels, self._detections(output, thresholds))
                self.writer.add_image(f"val_images/{i}", torch.cat([truth, predicted], 2), step)
        finally:
            self.model.train(was_training)

    def _draw_truth(self, pixels: Tensor, target: dict[str, Tensor]) -> Tensor:
        """``pixels`` (uint8[3, H, W]) with the true boxes (xyxy, input pixels), labelled."""
        assert self.val_set is not None
        boxes = target["boxes"].reshape(-1, 4).float()
        if len(boxes) == 0:
            return pixels
        names = [self.val_set.class_names[int(label)] for label in target["labels"]]
        drawn: Tensor = draw_bounding_boxes(
            pixels, boxes, labels=names, colors=_TRUTH_COLOR, width=1
        )
        return drawn

    def _detections(
        self, output: dict[str, Tensor], thresholds: dict[int, float]
    ) -> list[DetectionOut]:
        """The model's output on one image (boxes xyxy in input pixels) as drawable detections
        above their class's threshold."""
        assert self.val_set is not None
        found = []
        for box, label, score in zip(
            output["boxes"].float().cpu().tolist(),
            output["labels"].cpu().tolist(),
            output["scores"].float().cpu().tolist(),
            strict=True,
        ):
            category_id = self.val_set.category_ids[label]
            if score < thresholds.get(category_id, DEFAULT_SCORE):
                continue
            x0, y0, x1, y1 = box
            found.append(
                DetectionOut(
                    category_id=category_id,
                    category_name=self.val_set.class_names[label],
                    bbox=(x0, y0, x1 - x0, y1 - y0),
                    score=score,
                )
            )
        return found
