"""Likely missing labels: images lacking a class that nearly every other image has many of."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.data.validate import Category, ImageRecord

ABSENT_MIN_IMAGES = 20
ABSENT_MIN_SHARE = 0.9
ABSENT_MIN_MEDIAN = 3
"""``class_absent``: a class in at least this share of (at least this many) images, with a
median of at least this many boxes where present, is suspicious where it has none at all. BCCD's
red cells (197 of 205 training images, median 11) are; its white cells (about one per image)
are not: one object per image is often absent for real."""


def absent_class(records: tuple[ImageRecord, ...], cat: Category) -> Iterator[tuple[int, str, str]]:
    """(image id, file name, message) per labelled image lacking ``cat`` where it abounds."""
    per_image = [r.category_ids.count(cat.id) for r in records]  # a crowd box is a label
    present = sorted(n for n in per_image if n)
    if len(records) < ABSENT_MIN_IMAGES or len(present) == len(records):
        return
    median = present[len(present) // 2]
    if len(present) < ABSENT_MIN_SHARE * len(records) or median < ABSENT_MIN_MEDIAN:
        return
    share = f"{len(present)} of {len(records)} images have them, median {median} per image"
    for r, n in zip(records, per_image, strict=True):
        if n == 0 and r.category_ids:  # an image without any box is already reported
            yield (
                r.id,
                r.file_name,
                f"no {cat.name!r} box although {share}; check for missing labels",
            )
