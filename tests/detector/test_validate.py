"""COCO validation on hand-made broken datasets: each defect found, named, counted, handled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detector.data.validate import DatasetError, ValidationReport, load_coco, validate_coco
from tests.detector.coco_files import (
    CATEGORIES,
    annotation,
    base_dataset,
    check,
    image_file,
    only_issue,
    write_dataset,
)


def test_clean_dataset_is_ok_with_correct_stats(tmp_path: Path) -> None:
    coco = validate_coco(*write_dataset(tmp_path, base_dataset()))
    report = coco.report
    assert report.ok and report.issues == []
    assert (report.num_images, report.num_annotations, report.num_boxes) == (2, 2, 2)
    assert (report.num_boxes_dropped, report.num_boxes_clipped, report.num_crowd) == (0, 0, 0)
    assert report.class_counts == {"cat": 1, "dog": 1}
    assert report.num_negative_images == 0
    assert [c.id for c in coco.categories] == [3, 17]
    first, second = coco.images
    assert (first.id, first.width, first.height, first.path.name) == (1, 64, 48, "a.png")
    assert first.boxes == ((4.0, 6.0, 24.0, 16.0),) and first.category_ids == (3,)
    assert second.boxes == ((0.0, 0.0, 80.0, 60.0),) and second.crowd == (False,)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"images": [', "invalid_json"),
        ("[1, 2]", "invalid_structure"),
        ('{"images": [], "annotations": []}', "invalid_structure"),
        ('{"images": {}, "annotations": [], "categories": []}', "invalid_structure"),
    ],
)
def test_unusable_file_is_an_error(tmp_path: Path, text: str, code: str) -> None:
    coco = validate_coco(*write_dataset(tmp_path, text))
    issue = only_issue(coco.report, code)
    assert issue.severity == "error" and not coco.report.ok
    assert coco.images == () and coco.categories == ()


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ({"file_name": "a.png"}, "invalid_image"),
        ({"id": "7", "file_name": "a.png"}, "invalid_image"),
        ({"id": 7, "file_name": 5}, "invalid_image"),
        ({"id": 1, "file_name": "b.jpg"}, "duplicate_image_id"),
        ({"id": 7, "file_name": "../a.png"}, "unsafe_file_name"),
        ({"id": 7, "file_name": "/etc/passwd"}, "unsafe_file_name"),
        ({"id": 7, "file_name": "gone.png"}, "missing_image"),
    ],
)
def test_bad_image_entry_is_an_error(tmp_path: Path, entry: dict[str, Any], code: str) -> None:
    data = base_dataset()
    data["images"].append(entry)
    issue = only_issue(check(tmp_path, data), code)
    assert issue.severity == "error"
    if isinstance(entry.get("id"), int):
        assert issue.image_id == entry["id"]


def test_unreadable_and_unsupported_files_are_errors(tmp_path: Path) -> None:
    data = base_dataset()
    data["images"] += [{"id": 7, "file_name": "junk.png"}, {"id": 8, "file_name": "c.bmp"}]
    path, image_dir = write_dataset(tmp_path, data)
    (image_dir / "junk.png").write_bytes(b"this is not a PNG" * 10)
    image_file(image_dir / "c.bmp", (16, 16))
    coco = validate_coco(path, image_dir)
    assert only_issue(coco.report, "unreadable_image").image_id == 7
    assert only_issue(coco.report, "unsupported_format").image_id == 8
    assert [r.id for r in coco.images] == [1, 2]  # unusable images are left out


def test_truncated_file_is_found_only_when_decoding(tmp_path: Path) -> None:
    path, image_dir = write_dataset(tmp_path, base_dataset())
    noise = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image_dir / "b.jpg")  # noise: the header is a small part
    full = (image_dir / "b.jpg").read_bytes()
    (image_dir / "b.jpg").write_bytes(full[: len(full) // 2])
    assert validate_coco(path, image_dir).report.ok  # the header is intact
    report = validate_coco(path, image_dir, decode_images=True).report
    issue = only_issue(report, "unreadable_image")
    assert (issue.severity, issue.image_id, issue.file_name) == ("error", 2, "b.jpg")
    assert report.num_boxes_dropped == 1 and report.num_boxes == 1


def test_duplicate_annotation_and_category_ids_are_errors(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(10, 2, [1, 1, 5, 5]))
    data["categories"].append({"id": 17, "name": "horse"})
    data["categories"].append({"id": 4})
    report = check(tmp_path, data)
    assert only_issue(report, "duplicate_annotation_id").annotation_id == 10
    assert only_issue(report, "duplicate_category_id").category_id == 17
    assert only_issue(report, "invalid_category").category_id == 4
    assert {i.severity for i in report.issues} == {"error"}


def test_annotation_of_unknown_image_is_an_error(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 99, [1, 1, 5, 5]))
    report = check(tmp_path, data)
    issue = only_issue(report, "unknown_image")
    assert (issue.severity, issue.annotation_id, issue.image_id) == ("error", 12, 99)
    assert report.num_boxes_dropped == 1


@pytest.mark.parametrize(
    "bbox",
    [
        None,
        [1, 2, 3],
        [1, 2, 3, 4, 5],
        ["1", 2, 3, 4],
        [1, 2, float("nan"), 4],
        [1, 2, 3, float("inf")],
        [1, 2, True, 4],
        "1,2,3,4",
    ],
)
def test_invalid_bbox_is_dropped_with_a_warning(tmp_path: Path, bbox: Any) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 1, bbox))
    if bbox is None:
        del data["annotations"][-1]["bbox"]
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "invalid_bbox")
    assert (issue.severity, issue.annotation_id, issue.image_id) == ("warning", 12, 1)
    assert coco.report.ok and coco.report.num_boxes_dropped == 1 and coco.report.num_boxes == 2
    assert len(coco.images[0].boxes) == 1


@pytest.mark.parametrize("bbox", [[5, 5, 0, 10], [5, 5, 10, -2], [5, 5, 0, 0]])
def test_nonpositive_box_is_dropped(tmp_path: Path, bbox: list[float]) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 1, bbox))
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "nonpositive_box")
    assert (issue.severity, issue.annotation_id) == ("warning", 12)
    assert "width" in issue.message and coco.report.num_boxes_dropped == 1
    assert coco.images[0].boxes == ((4.0, 6.0, 24.0, 16.0),)


def test_box_partly_outside_is_clipped_and_the_amounts_reported(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 1, [-5, 30, 20, 28.5]))  # 64x48: 5 left, 10.5 bottom
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "box_outside_image")
    assert (issue.severity, issue.annotation_id, issue.image_id) == ("warning", 12, 1)
    assert "5 px on the left" in issue.message and "10.5 px on the bottom" in issue.message
    assert "right" not in issue.message and "top" not in issue.message
    assert coco.report.num_boxes_clipped == 1 and coco.report.num_boxes == 3
    assert coco.images[0].boxes[1] == (0.0, 30.0, 15.0, 48.0)


@pytest.mark.parametrize("bbox", [[64, 10, 5, 5], [-20, 10, 20, 5], [10, 100, 5, 5]])
def test_box_entirely_outside_is_dropped(tmp_path: Path, bbox: list[float]) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 1, bbox))
    coco = validate_coco(*write_dataset(tmp_path, data))
    assert only_issue(coco.report, "box_entirely_outside").annotation_id == 12
    assert coco.report.num_boxes_dropped == 1 and len(coco.images[0].boxes) == 1


def test_near_duplicate_box_of_the_same_class_is_dropped(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"] += [
        annotation(12, 1, [4.5, 6, 20, 10], 3),  # IoU 0.95 with annotation 10, same class: dropped
        annotation(13, 1, [4, 6, 20, 10], 17),  # same box, other class: kept
        annotation(14, 1, [4, 6, 20, 10], 3, iscrowd=1),  # crowd: kept
    ]
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "duplicate_box")
    assert (issue.severity, issue.annotation_id, issue.image_id) == ("warning", 12, 1)
    assert "repeats annotation 10" in issue.message and "IoU 0.95" in issue.message
    assert coco.images[0].category_ids == (3, 17, 3) and coco.images[0].crowd == (
        False,
        False,
        True,
    )
    assert coco.report.num_boxes_dropped == 1


def test_unknown_category_is_dropped(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 1, [1, 1, 5, 5], category_id=5))
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "unknown_category")
    assert (issue.severity, issue.annotation_id, issue.image_id) == ("warning", 12, 1)
    assert coco.report.num_boxes_dropped == 1 and coco.images[0].category_ids == (3,)


def test_declared_size_mismatch_uses_the_real_size(tmp_path: Path) -> None:
    data = base_dataset()
    data["images"][0].update(width=100, height=100)
    data["annotations"].append(annotation(12, 1, [50, 40, 30, 30]))  # inside 100x100, not 64x48
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "size_mismatch")
    assert (issue.severity, issue.image_id) == ("warning", 1)
    assert "100x100" in issue.message and "64x48" in issue.message
    assert (coco.images[0].width, coco.images[0].height) == (64, 48)
    assert coco.images[0].boxes[1] == (50.0, 40.0, 64.0, 48.0)
    assert only_issue(coco.report, "box_outside_image").annotation_id == 12


def test_missing_size_is_info(tmp_path: Path) -> None:
    data = base_dataset()
    del data["images"][1]["width"]
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "missing_size")
    assert (issue.severity, issue.image_id) == ("info", 2)
    assert coco.report.ok and coco.images[1].width == 80


def test_image_without_boxes_is_kept_as_a_negative(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    data["categories"] = data["categories"][:1]
    coco = validate_coco(*write_dataset(tmp_path, data))
    issue = only_issue(coco.report, "image_without_boxes")
    assert (issue.severity, issue.image_id) == ("info", 2)
    assert coco.report.num_negative_images == 1 and coco.images[1].boxes == ()
    assert coco.report.ok


def test_category_without_boxes_and_duplicate_file_name_are_warnings(tmp_path: Path) -> None:
    data = base_dataset()
    data["categories"].append({"id": 90, "name": "bird"})
    data["images"].append({"id": 3, "file_name": "a.png", "width": 64, "height": 48})
    report = check(tmp_path, data)
    assert (
        only_issue(report, "category_without_boxes").category_id,
        report.class_counts["bird"],
    ) == (
        90,
        0,
    )
    issue = only_issue(report, "duplicate_file_name")
    assert (issue.severity, issue.image_id, issue.file_name) == ("warning", 3, "a.png")
    assert report.ok


def test_crowd_boxes_are_kept_as_crowd_not_positives(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"][1]["iscrowd"] = 1  # the only dog
    data["annotations"].append(annotation(12, 1, [1, 1, 0, 5], iscrowd=1))  # validated like any box
    coco = validate_coco(*write_dataset(tmp_path, data))
    report = coco.report
    assert (report.num_boxes, report.num_crowd, report.num_boxes_dropped) == (1, 1, 1)
    assert only_issue(report, "nonpositive_box").annotation_id == 12
    assert report.class_counts == {"cat": 1, "dog": 0}
    assert only_issue(report, "category_without_boxes").category_id == 17
    assert only_issue(report, "image_without_boxes").image_id == 2
    assert coco.images[1].crowd == (True,) and report.num_negative_images == 1


def test_strict_turns_warnings_into_errors_but_not_info(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"].append(annotation(12, 1, [60, 40, 10, 10]))
    del data["images"][1]["height"]
    report = check(tmp_path, data, strict=True)
    assert report.strict and not report.ok
    assert only_issue(report, "box_outside_image").severity == "error"
    assert only_issue(report, "missing_size").severity == "info"
    assert report.counts() == {("error", "box_outside_image"): 1, ("info", "missing_size"): 1}
    with pytest.raises(DatasetError):
        load_coco(*write_dataset(tmp_path, data), strict=True)
    assert load_coco(*write_dataset(tmp_path, data)).report.num_boxes_clipped == 1


def test_load_coco_raises_with_the_report(tmp_path: Path) -> None:
    data = base_dataset()
    data["images"] += [{"id": i, "file_name": f"gone{i}.png"} for i in range(20, 27)]
    with pytest.raises(DatasetError) as caught:
        load_coco(*write_dataset(tmp_path, data))
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.report.counts()[("error", "missing_image")] == 7
    message = str(error)
    assert "7 error(s)" in message and "missing_image x7" in message
    assert "gone20.png" in message and "... and 2 more" in message


def test_table_lists_counts_and_truncates_items(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"] += [annotation(100 + k, 1, [1, 1, 0, 1]) for k in range(4)]
    report = check(tmp_path, data)
    table = report.to_table(max_items_per_code=3)
    assert "OK" in table.splitlines()[0]
    assert "nonpositive_box" in table and "annotation 102" in table
    assert "annotation 103" not in table and "... and 1 more (use --json)" in table
    assert ValidationReport.model_validate_json(report.model_dump_json()) == report


def test_every_annotation_is_kept_or_dropped(tmp_path: Path) -> None:
    data = base_dataset()
    data["annotations"] += [
        annotation(12, 1, [60, 40, 10, 10]),
        annotation(13, 1, [1, 1, 5, 5], category_id=99),
        annotation(14, 2, [1, 1, 5, 5], iscrowd=1),
        annotation(15, 42, [1, 1, 5, 5]),
        "not an annotation",
    ]
    report = check(tmp_path, data)
    assert report.num_annotations == 7
    assert (report.num_boxes, report.num_crowd, report.num_boxes_dropped) == (3, 1, 3)
    assert only_issue(report, "invalid_annotation").severity == "error"


def abundant_dataset(tmp_path: Path, *, cats_in: int, cats: int = 3) -> dict[str, Any]:
    """20 images with a dog each; the first ``cats_in`` of them also have ``cats`` cats."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    images, annotations = [], []
    for i in range(1, 21):
        image_file(image_dir / f"{i}.png", (64, 48))
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        annotations.append(annotation(100 * i, i, [40, 30, 20, 15], 17))
        if i <= cats_in:
            annotations += [
                annotation(100 * i + k, i, [10 * k, 2, 8, 8], 3) for k in range(1, cats + 1)
            ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def test_image_lacking_a_class_every_other_image_has_many_of_is_flagged(tmp_path: Path) -> None:
    data = abundant_dataset(tmp_path, cats_in=19)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    report = validate_coco(tmp_path / "instances.json", tmp_path / "images").report
    issue = only_issue(report, "class_absent")
    assert (issue.severity, issue.image_id, issue.category_id) == ("info", 20, 3)
    assert "19 of 20 images" in issue.message and "median 3" in issue.message
    assert report.ok and report.class_counts == {"cat": 57, "dog": 20}


@pytest.mark.parametrize(("cats_in", "cats"), [(17, 3), (20, 3), (19, 2)])
def test_class_absent_needs_many_in_nearly_every_image(
    tmp_path: Path, cats_in: int, cats: int
) -> None:
    data = abundant_dataset(tmp_path, cats_in=cats_in, cats=cats)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    report = validate_coco(tmp_path / "instances.json", tmp_path / "images").report
    assert not [i for i in report.issues if i.code == "class_absent"], report.to_table()
