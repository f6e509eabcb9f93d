"""Dense outputs + per-call selection reproduce torchvision's RetinaNet post-processing."""

from __future__ import annotations

import torch
from torchvision.models.detection import RetinaNet

from detector.model.build import build_model
from detector.model.postprocess import DenseRetinaNet, SelectOptions, pad_batch, select_detections
from detector.recipe import load_recipe
from tests.trained import CONFIGS


def _model_and_images() -> tuple[RetinaNet, list[torch.Tensor]]:
    torch.manual_seed(0)
    cfg = load_recipe(CONFIGS / "shapes_tiny.yaml")
    model = build_model(cfg.model, cfg.loss, num_classes=3).eval()
    with torch.no_grad():  # raise the prior so that plenty of anchors pass the threshold
        model.head.classification_head.cls_logits.bias.fill_(-1.0)
    return model, [torch.rand(3, 100, 120), torch.rand(3, 128, 96)]


def _dense(model: RetinaNet, images: list[torch.Tensor]):
    dense = DenseRetinaNet(model).eval()
    batch, sizes = pad_batch(images, size_divisible=dense.size_divisible, pad_value=dense.pad_value)
    with torch.no_grad():
        boxes, scores = dense(batch)
    return dense, batch, sizes, boxes, scores


def test_selection_with_the_recipe_settings_equals_torchvision_forward() -> None:
    model, images = _model_and_images()
    with torch.no_grad():
        reference = model(images)
    dense, batch, sizes, boxes, scores = _dense(model, images)
    per_level = dense.anchors_per_level(batch.shape[-2], batch.shape[-1])
    assert sum(per_level) == boxes.shape[1] == scores.shape[1] and scores.shape[2] == 3
    options = SelectOptions(
        score_threshold=model.score_thresh,
        topk_candidates=model.topk_candidates,
        nms_iou=model.nms_thresh,
        max_detections=model.detections_per_img,
    )
    for i, ref in enumerate(reference):
        ours = select_detections(
            boxes[i], scores[i], anchors_per_level=per_level, image_size=sizes[i], options=options
        )
        assert len(ref["boxes"]) == model.detections_per_img  # a real test: many candidates
        torch.testing.assert_close(ours.boxes, ref["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.scores, ref["scores"])
        assert torch.equal(ours.labels, ref["labels"])


def test_per_call_settings_change_the_selection() -> None:
    model, images = _model_and_images()
    dense, batch, sizes, boxes, scores = _dense(model, images)
    per_level = dense.anchors_per_level(batch.shape[-2], batch.shape[-1])

    def select(**kwargs: float) -> int:
        options = SelectOptions(**{"max_detections": 10_000, **kwargs})  # type: ignore[arg-type]
        dets = select_detections(
            boxes[0], scores[0], anchors_per_level=per_level, image_size=sizes[0], options=options
        )
        assert bool(
            (dets.boxes[:, 2] <= sizes[0][1]).all() & (dets.boxes[:, 3] <= sizes[0][0]).all()
        )
        return len(dets.scores)

    assert select(nms_iou=0.3) < select(nms_iou=0.5) < select(nms_iou=0.9)
    assert select(score_threshold=0.3) < select(score_threshold=0.2)
    assert select(max_detections=7) == 7


def test_pad_batch_pads_with_the_given_colour() -> None:
    images = [torch.zeros(3, 10, 20), torch.ones(3, 40, 5)]
    batch, sizes = pad_batch(images, size_divisible=32, pad_value=(0.5, 0.25, 0.125))
    assert batch.shape == (2, 3, 64, 32) and sizes == [(10, 20), (40, 5)]
    assert batch[0, :, :10, :20].abs().sum() == 0 and batch[1, :, :40, :5].min() == 1
    assert batch[0, :, 30, 30].tolist() == [0.5, 0.25, 0.125]
