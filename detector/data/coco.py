"""COCO detection dataset over validated data: images and targets ready for RetinaNet.

COCO category ids are arbitrary integers (COCO's own run 1..90 with gaps); the model predicts
contiguous labels 0..K-1, given in category-id order. ``category_ids[label]`` maps back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from detector.data.validate import CleanCoco, ImageRecord, load_coco

Target = dict[str, Tensor]
Transforms = Callable[..., Any]


class CocoDetection(Dataset[tuple[Tensor, Target]]):
    """``dataset[i]`` is ``(image float32[3, H, W] in [0, 1], target)`` with target:

    - ``boxes`` float32[N, 4] xyxy, non-crowd only, in the pixels of the returned image;
    - ``labels`` int64[N] contiguous model labels;
    - ``crowd_boxes`` float32[C, 4] xyxy (to ignore, never to train as positives);
    - ``image_id`` int64[] the COCO image id; ``orig_size`` int64[2] the file's (H, W).

    Images without boxes are kept (N = 0): they are the negatives focal loss learns from.
    """

    def __init__(self, *, coco: CleanCoco, transforms: Transforms | None) -> None:
        self.coco = coco
        self.transforms = transforms
        self.category_ids: tuple[int, ...] = tuple(c.id for c in coco.categories)
        self.class_names: tuple[str, ...] = tuple(c.name for c in coco.categories)
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

    @classmethod
    def from_files(
        cls,
        annotations: Path,
        image_dir: Path,
        *,
        strict: bool = False,
        transforms: Transforms | None = None,
    ) -> CocoDetection:
        """Validate and load a COCO dataset; raises ``DatasetError`` when it has errors."""
        return cls(coco=load_coco(annotations, image_dir, strict=strict), transforms=transforms)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def class_counts(self) -> tuple[int, ...]:
        """Boxes per class (contiguous labels), crowd boxes excluded."""
        counts = dict.fromkeys(self.category_ids, 0)
        for record in self.coco.images:
            for category_id, crowd in zip(record.category_ids, record.crowd, strict=True):
                counts[category_id] += not crowd
        return tuple(counts.values())

    def label_of(self, category_id: int) -> int:
        """The contiguous model label of a COCO category id."""
        try:
            return self._label_of[category_id]
        except KeyError:
            raise KeyError(f"category id {category_id} is not one of {self.category_ids}") from None

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        record = self.coco.images[index]
        image = tv_tensors.Image(decode_image(str(record.path), mode=ImageReadMode.RGB))
        if image.dtype != torch.uint8:  # 16-bit PNGs: the transforms expect uint8
            image = F.to_dtype(image, torch.uint8, scale=True)
        if image.shape[-2:] != (record.height, record.width):
            raise RuntimeError(
                f"{record.path} is {image.shape[-1]}x{image.shape[-2]} now but was "
                f"{record.width}x{record.height} when validated; was the file replaced?"
            )
        target = self._raw_target(record)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = F.to_dtype(image, torch.float32, scale=True)
        return _plain(image), _split_crowd(target, record)

    def _raw_target(self, record: ImageRecord) -> dict[str, Tensor]:
        """All boxes (crowd too) as they go through the transforms."""
        boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
        labels = [self._label_of[c] for c in record.category_ids]
        return {
            "boxes": tv_tensors.BoundingBoxes(
                boxes, format="XYXY", canvas_size=(record.height, record.width)
            ),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "crowd": torch.tensor(record.crowd, dtype=torch.bool),
        }


def _split_crowd(target: dict[str, Tensor], record: ImageRecord) -> Target:
    """Separate crowd boxes after the transforms, which may have removed some boxes."""
    boxes = _plain(target["boxes"]).to(torch.float32).reshape(-1, 4)
    crowd = target["crowd"].to(torch.bool)
    return {
        "boxes": boxes[~crowd],
        "labels": target["labels"][~crowd].to(torch.int64),
        "crowd_boxes": boxes[crowd],
        "image_id": torch.tensor(record.id, dtype=torch.int64),
        "orig_size": torch.tensor((record.height, record.width), dtype=torch.int64),
    }


def _plain(tensor: Tensor) -> Tensor:
    """Drop the tv_tensors subclass so models, collate and ``.to()`` see an ordinary tensor."""
    return tensor.as_subclass(Tensor)


def collate_detection(
    batch: Sequence[tuple[Tensor, Target]],
) -> tuple[list[Tensor], list[Target]]:
    """Images differ in size, so a batch is two lists (the model pads them itself)."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
