"""``Predictor`` options on a really trained model, and the model file it loads from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.artifact import ModelFileError, read_card, save_model_file
from detector.engine.checkpoint import BEST
from detector.predict import PredictOptions, Predictor, read_rgb
from tests.trained import TrainedRun

pytestmark = pytest.mark.slow


def _images(run: TrainedRun, n: int = 4) -> list[torch.Tensor]:
    return [read_rgb(p) for p in sorted((run.shapes / "images").glob("val_*.png"))[:n]]


@pytest.fixture(scope="module")
def model_file(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model_file(trained_run.workdir / "checkpoints" / BEST, out)
    return out


def test_model_file_holds_the_card_and_predicts_as_the_checkpoint(
    trained_run: TrainedRun, model_file: Path
) -> None:
    card = read_card(model_file)
    assert [c.name for c in card.classes] == ["circle", "square", "triangle"]
    assert card.recipe == trained_run.cfg
    assert card.val_metrics is not None
    # Thresholds are the validation run's best-F1 scores, for the classes that have one.
    best_f1 = {c.category_id: c.best_f1_threshold for c in card.val_metrics.per_class}
    assert card.score_thresholds == {k: v for k, v in best_f1.items() if v is not None}
    assert card.score_thresholds  # the trained model finds at least one class
    images = _images(trained_run)
    options = PredictOptions(score_threshold=0.1)
    from_file = Predictor.load(model_file).predict(images, options)
    from_ckpt = Predictor.load(trained_run.workdir / "checkpoints" / BEST).predict(images, options)
    assert from_file == from_ckpt and sum(map(len, from_file)) > 0


def test_thresholds_and_class_filter_do_what_they_say(
    trained_run: TrainedRun, model_file: Path
) -> None:
    predictor = Predictor.load(model_file)
    images = _images(trained_run)
    # Everything above 0, uncapped: the filters below must equal filtering this list.
    low = predictor.predict(images, PredictOptions(score_threshold=0.0, max_detections=10_000))
    high = predictor.predict(images, PredictOptions(score_threshold=0.3))
    for a, b in zip(low, high, strict=True):
        assert all(d.score >= 0.3 for d in b)
        assert [d for d in a if d.score >= 0.3] == b
    auto = predictor.predict(images, PredictOptions())
    thresholds = predictor.card.score_thresholds
    for a, b in zip(low, auto, strict=True):
        expected = [
            d
            for d in a
            if d.score >= thresholds.get(d.category_id, predictor.card.recipe.model.score_thresh)
        ]
        assert b == expected
    only = predictor.predict(images, PredictOptions(score_threshold=0.0, class_ids=(2,)))
    for a, b in zip(low, only, strict=True):
        assert b == [d for d in a if d.category_id == 2][:100]  # the recipe's cap
    few = predictor.predict(images, PredictOptions(score_threshold=0.0, max_detections=3))
    # The filters apply before the cap: a rare class keeps its detections under a small cap.
    capped = predictor.predict(
        images, PredictOptions(score_threshold=0.0, class_ids=(3,), max_detections=5)
    )
    for a, b in zip(low, capped, strict=True):
        assert b == [d for d in a if d.category_id == 3][:5]
    assert all(len(d) <= 3 for d in few) and few[0] == low[0][:3]
    with pytest.raises(ValueError, match=r"unknown class ids \[7\]"):
        predictor.predict(images, PredictOptions(class_ids=(7,)))
    with pytest.raises(ValueError, match="tiles"):  # bounded work, whatever is asked
        predictor.predict([images[0].repeat(1, 20, 20)], PredictOptions(tile_size=64))


def test_tiled_inference_maps_tiles_back_to_the_image(
    trained_run: TrainedRun, model_file: Path
) -> None:
    predictor = Predictor.load(model_file)
    # Four images side by side: one large image with small objects.
    images = _images(trained_run)
    big = torch.cat([torch.cat(images[:2], dim=2), torch.cat(images[2:], dim=2)], dim=1)
    options = PredictOptions(score_threshold=0.2, tile_size=96, tile_overlap=0.25)
    (tiled,) = predictor.predict([big], options)
    singles = predictor.predict(images, PredictOptions(score_threshold=0.2))
    assert len(tiled) > 0
    for det in tiled:
        x, y, w, h = det.bbox
        assert x >= 0 and y >= 0 and x + w <= 192 + 1e-3 and y + h <= 192 + 1e-3
    # Each single-image detection reappears in the tiled result at its offset (tiles at 0 and
    # 96 coincide with the images; the overlapping tiles only add candidates before NMS).
    offsets = [(0, 0), (96, 0), (0, 96), (96, 96)]
    found = 0
    for (dx, dy), dets in zip(offsets, singles, strict=True):
        for d in dets:
            target = (d.bbox[0] + dx, d.bbox[1] + dy)
            found += any(
                t.category_id == d.category_id
                and abs(t.bbox[0] - target[0]) < 4
                and abs(t.bbox[1] - target[1]) < 4
                for t in tiled
            )
    assert found >= 0.7 * sum(map(len, singles)), (found, sum(map(len, singles)))


def test_not_a_model_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        read_card(bad)
    with pytest.raises(ModelFileError, match="not found"):
        read_card(tmp_path / "missing.safetensors")
