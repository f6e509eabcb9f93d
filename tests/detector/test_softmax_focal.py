"""``loss.classification: softmax_focal`` and ``loss.alpha: auto``: the formulas written out
here, the scores a softmax head gives post-processing, and a real tiny training run that
learns, predicts and exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from detector.engine.callbacks import JsonlEvents
from detector.engine.checkpoint import LAST
from detector.engine.trainer import fit
from detector.export import export_onnx
from detector.model.build import resolve_alpha
from detector.model.heads import (
    FocalClassificationHead,
    foreground_log_odds,
    gather_matched,
    softmax_class_alpha,
)
from detector.model.losses import frequency_alpha
from detector.model.matching import pad_targets
from detector.predict import PredictOptions, Predictor, read_rgb
from tests.trained import shapes_recipe

K = 3


def test_auto_alpha_rule() -> None:
    assert frequency_alpha([50, 50, 50]) == pytest.approx((0.25, 0.25, 0.25))
    # Shares 0.81, 0.09, 0.09 (and a class without boxes counts one): w = 1 / sqrt(share).
    counts = [810, 90, 90]
    w = [1 / math.sqrt(c / 990) for c in counts]
    expected = [0.25 * 3 * wi / sum(w) for wi in w]
    got = frequency_alpha(counts)
    assert got == pytest.approx(expected) and sum(got) / 3 == pytest.approx(0.25)
    assert got[0] < 0.25 < got[1] == got[2]
    assert frequency_alpha([1000] * 7 + [1])[-1] == 0.99  # 1.64 before clipping
    assert frequency_alpha([1_000_000, 0, 0])[0] == 0.01  # 0.0004; classes without boxes count 1
    # In the model: auto needs the counts, and stands for the scalar default without them.
    assert resolve_alpha("auto", [810, 90, 90]) == pytest.approx(expected)
    assert resolve_alpha("auto", None) == 0.25 and resolve_alpha(0.5, [1, 2]) == 0.5


def _head(alpha: float | tuple[float, ...] | None, gamma: float) -> FocalClassificationHead:
    return FocalClassificationHead(
        in_channels=8,
        num_anchors=1,
        num_classes=K,
        num_convs=0,
        loss="softmax_focal",
        alpha=alpha,
        gamma=gamma,
    )


@pytest.mark.parametrize("alpha", [None, 0.25, (0.2, 0.5, 0.8)])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_softmax_head_loss_is_the_formula(
    alpha: float | tuple[float, ...] | None, gamma: float
) -> None:
    """Five anchors of one image: two positives (classes 2, 0), two background, one ignored."""
    logits = torch.tensor(
        [[[1.0, -2.0, 3.0, 0.5], [2.0, 0.0, -1.0, 1.0], [0.0, 0.0, 0.0, 4.0],
          [-1.0, 2.5, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]]
    )  # fmt: skip
    targets = [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([2, 0])}]
    matched = [torch.tensor([0, 1, -1, -1, -2])]
    classes = [2, 0, K, K]  # background is class K; the ignored anchor is left out
    if alpha is None:
        weights = [1.0] * (K + 1)
    elif isinstance(alpha, tuple):
        weights = [*alpha, 1 - sum(alpha) / K]
    else:
        weights = [alpha] * K + [1 - alpha]
    expected = 0.0
    for row, y in zip(logits[0].tolist(), classes, strict=False):
        p_y = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected += -weights[y] * (1 - p_y) ** gamma * math.log(p_y)
    expected /= 2  # positives
    head = _head(alpha, gamma)
    gt = gather_matched(pad_targets(targets), torch.zeros(1, 5, 4), torch.stack(matched))
    got = head.compute_loss(gt, {"softmax_logits": logits})
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_softmax_scores_are_the_probabilities_without_background() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.5, 1.0], [40.0, -40.0, 0.0, -40.0], [-90, -90, -90, 90]]])
    scores = torch.sigmoid(foreground_log_odds(logits))
    expected = torch.softmax(logits, dim=-1)[..., :K]
    assert torch.isfinite(foreground_log_odds(logits)).all()
    assert torch.allclose(scores, expected, atol=1e-6)
    assert softmax_class_alpha(None, K) is None
    weights = softmax_class_alpha(0.25, 2)
    assert weights is not None and weights.tolist() == [0.25, 0.25, 0.75]


def test_softmax_head_starts_at_the_prior() -> None:
    head = _head(0.25, 2.0)
    with torch.no_grad():
        out = head.outputs([torch.zeros(1, 8, 4, 4)])
    assert out["softmax_logits"].shape == (1, 16, K + 1)
    assert torch.allclose(torch.sigmoid(out["cls_logits"]), torch.full((1, 16, K), 0.01))


@pytest.mark.slow
def test_softmax_model_learns_predicts_and_exports(shapes: Path, tmp_path: Path) -> None:
    cfg = shapes_recipe(
        shapes,
        "loss.classification=softmax_focal",
        "loss.alpha=auto",
        "solver.epochs=null",
        "solver.max_iters=60",
        "solver.steps=[]",
        "solver.warmup_iters=4",
        "solver.batch_size=4",
        "eval.period_epochs=100",
    )
    fit(cfg, tmp_path, callbacks=[JsonlEvents(path=tmp_path / "events.jsonl")])
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    steps = [sum(r["losses"].values()) for r in records if r["type"] == "step"]
    assert len(steps) == 60
    first, last = sum(steps[:6]) / 6, sum(steps[-6:]) / 6
    assert last < 0.6 * first, steps

    predictor = Predictor.load(tmp_path / "checkpoints" / LAST, device="cpu")
    head = predictor.model.head.classification_head
    assert head.num_outputs == K + 1 and head.softmax_alpha is not None  # auto: per class
    image = read_rgb(next((shapes / "images").glob("*.png")))
    detections = predictor.predict([image], PredictOptions(score_threshold=0.0))[0]
    assert detections and all(0 <= d.score <= 1 for d in detections)
    # The export checks its own detections against PyTorch's (raises when they disagree).
    export = export_onnx(predictor, tmp_path / "model.onnx", sample_images=[image])
    assert export.path.is_file()
