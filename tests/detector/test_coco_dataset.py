"""CocoDetection, its transforms and collate, on a tiny COCO folder written to tmp_path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detector.config import DataConfig
from detector.data.coco import CocoDetection, collate_detection
from detector.data.transforms import build_transforms, resized_hw
from detector.data.validate import DatasetError

CAT, DOG, BIRD = 3, 17, 90


def _write(tmp_path: Path, annotations: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Three images: 1 is 64x48, 2 is 32x32 (negative unless annotated), 3 is 48x64."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    sizes = {1: (64, 48), 2: (32, 32), 3: (48, 64)}
    for image_id, (w, h) in sizes.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{image_id}.png")
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": w, "height": h}
            for i, (w, h) in sizes.items()
        ],
        "annotations": [{"id": k + 1, **a} for k, a in enumerate(annotations)],
        # Out of order in the file on purpose: labels follow category ids, not file order.
        "categories": [
            {"id": BIRD, "name": "bird"},
            {"id": CAT, "name": "cat"},
            {"id": DOG, "name": "dog"},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, image_dir


def _box(image_id: int, category_id: int, xywh: list[float], crowd: int = 0) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": category_id, "bbox": xywh, "iscrowd": crowd}


ANNOTATIONS = [
    _box(1, CAT, [8, 6, 16, 12]),  # xyxy (8, 6, 24, 18)
    _box(1, BIRD, [30, 10, 20, 30]),
    _box(1, DOG, [0, 0, 64, 48], crowd=1),
    _box(3, DOG, [4, 4, 10, 10]),
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path, ANNOTATIONS)


def test_category_ids_map_to_contiguous_labels_and_back(files: tuple[Path, Path]) -> None:
    ds = CocoDetection.from_files(*files)
    assert ds.category_ids == (CAT, DOG, BIRD) and ds.num_classes == 3
    assert ds.class_names == ("cat", "dog", "bird")
    assert [ds.label_of(c) for c in (CAT, DOG, BIRD)] == [0, 1, 2]
    assert all(ds.category_ids[ds.label_of(c)] == c for c in ds.category_ids)
    with pytest.raises(KeyError, match="42"):
        ds.label_of(42)
    _, target = ds[0]
    assert target["labels"].tolist() == [0, 2]


def test_sample_without_transforms_has_the_specified_types(files: tuple[Path, Path]) -> None:
    image, target = CocoDetection.from_files(*files)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 64)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert type(image) is torch.Tensor and type(target["boxes"]) is torch.Tensor
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["boxes"][0].tolist() == [8.0, 6.0, 24.0, 18.0]
    assert target["labels"].dtype == torch.int64
    assert target["image_id"].dtype == torch.int64 and target["image_id"].shape == ()
    assert int(target["image_id"]) == 1
    assert target["orig_size"].dtype == torch.int64 and target["orig_size"].tolist() == [48, 64]


def test_negative_image_is_kept_with_empty_targets(files: tuple[Path, Path]) -> None:
    ds = CocoDetection.from_files(*files, transforms=build_transforms(DataConfig(), train=True))
    assert len(ds) == 3
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["crowd_boxes"].shape == (0, 4) and int(target["image_id"]) == 2


def test_crowd_boxes_are_never_positives(files: tuple[Path, Path]) -> None:
    for transforms in (None, build_transforms(DataConfig(hflip_prob=0.0), train=True)):
        ds = CocoDetection.from_files(*files, transforms=transforms)
        image, target = ds[0]
        assert target["labels"].tolist() == [0, 2]  # no dog: the dog is a crowd
        assert target["crowd_boxes"].shape == (1, 4)
        h, w = image.shape[-2:]
        assert target["crowd_boxes"][0].tolist() == [0.0, 0.0, float(w), float(h)]


def test_eval_transforms_resize_and_scale_boxes(files: tuple[Path, Path]) -> None:
    cfg = DataConfig(eval_min_size=96, max_size=1000)
    ds = CocoDetection.from_files(*files, transforms=build_transforms(cfg, train=False))
    image, target = ds[0]
    assert image.shape == (3, 96, 128) and image.dtype == torch.float32
    assert target["boxes"][0].tolist() == [16.0, 12.0, 48.0, 36.0]
    assert target["orig_size"].tolist() == [48, 64]
    assert torch.equal(ds[0][0], image)  # deterministic


def test_resize_caps_the_longer_side() -> None:
    assert resized_hw(480, 640, min_size=800, max_size=1333) == (800, 1067)
    assert resized_hw(480, 640, min_size=800, max_size=900) == (675, 900)
    assert resized_hw(480, 640, min_size=800, max_size=800) == (600, 800)
    image = torch.zeros(3, 480, 640, dtype=torch.uint8)
    eval_tf = build_transforms(DataConfig(eval_min_size=800, max_size=900), train=False)
    assert eval_tf(image).shape == (3, 675, 900)


def test_train_flip_moves_boxes(files: tuple[Path, Path]) -> None:
    # train_min_sizes=(48,) keeps the 64x48 image at its size, so only the flip acts.
    cfg = DataConfig(train_min_sizes=(48,), max_size=1000, hflip_prob=1.0)
    ds = CocoDetection.from_files(*files, transforms=build_transforms(cfg, train=True))
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert target["boxes"][0].tolist() == [40.0, 6.0, 56.0, 18.0]
    plain, _ = CocoDetection.from_files(*files)[0]
    assert torch.allclose(image, plain.flip(-1))


def test_vertical_flip_moves_boxes(files: tuple[Path, Path]) -> None:
    cfg = DataConfig(train_min_sizes=(48,), max_size=1000, hflip_prob=0.0, vflip_prob=1.0)
    ds = CocoDetection.from_files(*files, transforms=build_transforms(cfg, train=True))
    image, target = ds[0]
    assert target["boxes"][0].tolist() == [8.0, 30.0, 24.0, 42.0]
    plain, _ = CocoDetection.from_files(*files)[0]
    assert torch.allclose(image, plain.flip(-2))


def test_boxes_removed_by_transforms_take_their_flags(tmp_path: Path) -> None:
    tiny_crowd = _box(1, CAT, [50, 30, 2, 2], crowd=1)
    files = _write(tmp_path, [*ANNOTATIONS[:2], _box(1, DOG, [2, 2, 2, 2]), tiny_crowd])
    cfg = DataConfig(train_min_sizes=(12,), max_size=1000, hflip_prob=0.0)  # scale 1/4
    ds = CocoDetection.from_files(*files, transforms=build_transforms(cfg, train=True))
    image, target = ds[0]
    assert image.shape == (3, 12, 16)
    assert target["labels"].tolist() == [0, 2]  # the 0.5 px dog and crowd are gone
    assert target["boxes"][0].tolist() == [2.0, 1.5, 6.0, 4.5]
    assert target["crowd_boxes"].shape == (0, 4)


def test_multiscale_and_photometric_training(files: tuple[Path, Path]) -> None:
    cfg = DataConfig(train_min_sizes=(24, 96), max_size=1000, photometric=True)
    ds = CocoDetection.from_files(*files, transforms=build_transforms(cfg, train=True))
    torch.manual_seed(0)
    heights = {ds[0][0].shape[-2] for _ in range(12)}
    assert heights == {24, 96}
    image, _ = ds[2]
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0


def test_collate_with_a_data_loader(files: tuple[Path, Path]) -> None:
    cfg = DataConfig(eval_min_size=64, max_size=1000)
    ds = CocoDetection.from_files(*files, transforms=build_transforms(cfg, train=False))
    pickle.loads(pickle.dumps(ds))  # loader workers may receive it pickled
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_detection)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [2, 1]
    images, targets = batches[0]
    assert [tuple(i.shape) for i in images] == [(3, 64, 85), (3, 64, 64)]
    assert [int(t["image_id"]) for t in targets] == [1, 2]
    assert set(targets[0]) == {"boxes", "labels", "crowd_boxes", "image_id", "orig_size"}


def test_from_files_refuses_a_dataset_with_errors(tmp_path: Path) -> None:
    files = _write(tmp_path, [*ANNOTATIONS, _box(7, CAT, [1, 1, 2, 2])])
    with pytest.raises(DatasetError, match="unknown_image"):
        CocoDetection.from_files(*files)
