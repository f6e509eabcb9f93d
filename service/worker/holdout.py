"""A seeded validation split of a training set, for jobs that name no validation dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path


def split_holdout(
    annotations: Path, *, fraction: float, seed: int, out_dir: Path
) -> tuple[Path, Path]:
    """Write ``train.json`` and ``val.json`` (COCO) splitting the images; the same every time.

    At least one image goes to each side. Annotations follow their image.
    """
    data = json.loads(annotations.read_text())
    ids = sorted(img["id"] for img in data["images"])
    random.Random(seed).shuffle(ids)
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    val_ids = set(ids[:n_val])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, is_val in (("train", False), ("val", True)):
        part = {
            **data,
            "images": [img for img in data["images"] if (img["id"] in val_ids) == is_val],
            "annotations": [
                a for a in data["annotations"] if (a.get("image_id") in val_ids) == is_val
            ],
        }
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(part))
        paths.append(path)
    return paths[0], paths[1]
