"""COCO validation against hostile input: ids, names and nesting past what can be stored,
numbers past the float range, pixel bombs, links out of the image folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from detector.data.validate import validate_coco
from tests.detector.coco_files import base_dataset, check, image_file, with_fields, write_dataset


@pytest.mark.parametrize(
    ("data", "code", "names"),
    [
        # ids past 64 bits: an image id becomes an int64 tensor, a category id a checkpoint int
        (with_fields("images", 0, id=2**63), "invalid_image", "64-bit"),
        (with_fields("categories", 0, id=-(2**63) - 1), "invalid_category", "64-bit"),
        (with_fields("categories", 0, id=10**700), "invalid_category", "64-bit"),
        (with_fields("annotations", 0, id=2**64), "invalid_annotation", "64-bit"),
        (with_fields("categories", 1, name="do\x00g"), "invalid_category", "control characters"),
        (with_fields("categories", 1, name="\ud800"), "invalid_category", "control characters"),
        (with_fields("images", 0, file_name="a\x00.png"), "unsafe_file_name", "no valid file name"),
        (with_fields("images", 0, file_name="a\n.png"), "unsafe_file_name", "no valid file name"),
        (
            with_fields("images", 0, file_name="\udc80.png"),
            "unsafe_file_name",
            "no valid file name",
        ),
        (with_fields("images", 0, file_name="x" * 300 + ".png"), "unsafe_file_name", "valid file"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json", "nests too deeply"),
    ],
)
def test_ids_names_and_nesting_beyond_what_can_be_stored_are_errors(
    tmp_path: Path, data: Any, code: str, names: str
) -> None:
    report = check(tmp_path, data)
    assert not report.ok
    (issue,) = [i for i in report.errors() if i.code == code]
    assert names in issue.message
    report.model_dump_json()  # what the service sends back: always encodable
    assert all(i.file_name is None or "\x00" not in i.file_name for i in report.issues)


def test_int_bbox_coordinates_past_the_float_range_drop_the_box(tmp_path: Path) -> None:
    data = with_fields("annotations", 0, bbox=[10**400, 0, 5, 5])
    report = check(tmp_path, data)
    assert report.ok and report.num_boxes_dropped == 1
    assert [i.code for i in report.issues if i.annotation_id == 10] == ["invalid_bbox"]


def test_images_over_the_pixel_limit_are_errors(tmp_path: Path) -> None:
    report = check(tmp_path, base_dataset(), max_pixels=64 * 48)  # a.png fits exactly; b.jpg not
    (issue,) = report.errors()
    assert (issue.code, issue.image_id) == ("image_too_large", 2)
    assert "80x60 pixels exceeds the limit of 3072" in issue.message
    assert report.num_boxes_dropped == 1  # its box goes with it, and nothing else is reported


def test_the_default_pixel_limit_is_pillows(tmp_path: Path) -> None:
    path, image_dir = write_dataset(tmp_path, base_dataset())
    # 1-bit and blank: about 10 kB on disk, 90 megapixels in its header.
    Image.new("1", (9000, 10_000)).save(image_dir / "a.png")
    report = validate_coco(path, image_dir).report
    assert [(i.code, i.image_id) for i in report.errors()] == [("image_too_large", 1)]


@pytest.mark.parametrize("link", ["file", "folder"])
def test_links_out_of_the_root_are_errors(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    image_file(outside / "a.png", (64, 48))
    (tmp_path / "ds").mkdir()
    path, image_dir = write_dataset(tmp_path / "ds", base_dataset())
    (image_dir / "a.png").unlink()
    if link == "file":
        (image_dir / "a.png").symlink_to(outside / "a.png")
    else:
        (image_dir / "sub").symlink_to(outside)
        data = with_fields("images", 0, file_name="sub/a.png")
        path.write_text(json.dumps(data))
    report = validate_coco(path, image_dir).report
    issue, *rest = report.errors()  # and its annotation, as for any refused entry
    assert (issue.code, issue.image_id) == ("unsafe_file_name", 1)
    assert [i.code for i in rest] == ["unknown_image"]
    assert "links to a file outside" in issue.message
    # A wider root (the service's dataset root) allows it.
    assert validate_coco(path, image_dir, root=tmp_path).report.ok


def test_links_inside_the_folder_are_fine(tmp_path: Path) -> None:
    path, image_dir = write_dataset(tmp_path, base_dataset())
    (image_dir / "a.png").rename(image_dir / "real.png")
    (image_dir / "a.png").symlink_to("real.png")
    assert validate_coco(path, image_dir).report.ok
