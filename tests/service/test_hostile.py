"""The hostile-input matrix: every bad input is a clear 4xx naming what is wrong, and nothing
is kept (no dataset or job row, nothing left under the data dir's datasets/ and staging/).

Each case is a request against the real app (a real SQLite store, a valid dataset uploaded
first), the status and error code it must get, and a text that the message or the details
must hold (the field, archive entry, key or issue code at fault). Cases marked ``ROUTE`` need
a change in the route files (their reasons say which); the marks are strict, so each one
fails loudly once the change is made and the mark must go.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from detector.data.shapes import ShapesSpec, make_shapes
from service.app import create_app
from service.settings import Settings, hash_key
from tests.service.hostile_support import (
    AUTH,
    KEY,
    Build,
    Entries,
    Env,
    bad_utf8_name,
    big_image_upload,
    coco_upload,
    edit,
    encrypted,
    flip_data,
    get,
    job,
    make_zip,
    method_99,
    multipart,
    nested,
    patched,
    raw_body,
    recipe,
    register,
    upload,
    with_entries,
)


def case(id: str, build: Build, status: int, code: str, names: str, route: str = "") -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=f"ROUTE: {route}")] if route else []
    return pytest.param(build, status, code, names, id=id, marks=marks)


ARCHIVES = [
    case("bad-crc", patched(flip_data), 422, "invalid_archive", "annotations.json"),
    case("compression-99", patched(method_99), 422, "unsupported_archive", "method 99"),
    case("encrypted", patched(encrypted), 422, "unsupported_archive", "encrypted"),
    case("name-not-utf8", patched(bad_utf8_name), 422, "invalid_archive", "utf-8"),
    case("truncated", upload(lambda e: make_zip(e.entries)[:-30]), 422, "invalid_archive", "zip"),
    case("not-a-zip", upload(b"PK\x03\x04 no zip"), 422, "invalid_archive", "zip"),
    case(
        "symlink",
        upload(lambda e: make_zip(e.entries, link="images/x.png")),
        422,
        "unsafe_archive",
        "images/x.png",
    ),
    case(
        "file-then-folder",
        with_entries(("images/a", b"x"), ("images/a/b", b"y")),
        422,
        "invalid_archive",
        "images/a",
    ),
    case(
        "folder-then-file",
        with_entries(("images/c/b", b"y"), ("images/c", b"x")),
        422,
        "invalid_archive",
        "images/c",
    ),
    case("duplicate", with_entries(("annotations.json", b"{}")), 422, "invalid_archive", "ann"),
    case(
        "same-once-normalised",
        with_entries(("images\\q.png", b"x"), ("images//q.png", b"y")),
        422,
        "invalid_archive",
        "images//q.png",
    ),
    case("dot", with_entries((".", b"x")), 422, "invalid_archive", "'.'"),
    case("newline", with_entries(("images/a\nb", b"x")), 422, "invalid_archive", "a\\nb"),
    case("too-long", with_entries(("images/" + "a" * 300, b"x")), 422, "invalid_archive", "aaa"),
    case("escaping", with_entries(("../evil", b"x")), 422, "unsafe_archive", "../evil"),
    case("drive", with_entries(("C:/evil", b"x")), 422, "unsafe_archive", "C:/evil"),
]
COCO = [
    case(
        "deep-json",
        coco_upload(lambda c: b"[" * 100_000 + b"]" * 100_000),
        422,
        "invalid_dataset",
        "nests too deeply",
    ),
    case(
        "category-id-10**700",
        coco_upload(edit("categories", id=10**700)),
        422,
        "invalid_dataset",
        "invalid_category",
    ),
    case(
        "image-id-2**63",
        coco_upload(edit("images", id=2**63)),
        422,
        "invalid_dataset",
        "invalid_image",
    ),
    case(
        "annotation-id-below-int64",
        coco_upload(edit("annotations", id=-(2**63) - 1)),
        422,
        "invalid_dataset",
        "invalid_annotation",
    ),
    case(
        "category-name-nul",
        coco_upload(edit("categories", name="ci\x00rcle")),
        422,
        "invalid_dataset",
        "invalid_category",
    ),
    case(
        "category-name-surrogate",
        coco_upload(edit("categories", name="\ud800")),
        422,
        "invalid_dataset",
        "invalid_category",
    ),
    case(
        "file-name-nul",
        coco_upload(edit("images", file_name="a\x00.png")),
        422,
        "invalid_dataset",
        "unsafe_file_name",
    ),
    case(
        "file-name-surrogate",
        coco_upload(edit("images", file_name="\udc80.png")),
        422,
        "invalid_dataset",
        "unsafe_file_name",
    ),
    case(
        "file-name-5000-bytes",
        coco_upload(edit("images", file_name="a" * 5000)),
        422,
        "invalid_dataset",
        "unsafe_file_name",
    ),
    case(
        "image-90-megapixels",
        big_image_upload(9000, 10_000),
        422,
        "invalid_dataset",
        "image_too_large",
    ),
    # Under Pillow's limit but over RETINANET_PREDICT_MAX_PIXELS (40 M): it would train, and
    # then no predict request could take it.
    case(
        "image-over-predict-limit",
        big_image_upload(5000, 9000),
        422,
        "invalid_dataset",
        "40000000",
    ),
]
PATHS = [
    case("annotations-nul", register(annotations="ds/\x00"), 422, "invalid_request", "annotations"),
    case("images-newline", register(images="ds/\nimages"), 422, "invalid_request", "images"),
    case("path-6000", register(annotations="a/" * 3000), 422, "invalid_request", "annotations"),
    case("name-bell", register(name="a\x07b"), 422, "invalid_request", "name"),
    case("name-201", register(name="n" * 201), 422, "invalid_request", "name"),
    case("escape", register(images="../../"), 403, "path_not_allowed", "../../"),
    case(
        "file-name-links-outside",
        register(annotations="ds/links.json"),
        422,
        "invalid_dataset",
        "links to a file outside",
    ),
]
JSON_BODIES = [
    case("jobs-deep", raw_body("/v1/jobs", nested(100_000)), 400, "bad_request", "body"),
    # The registration's body is parsed by FastAPI as every JSON body is: what its parser
    # cannot read (nested past its recursion, not UTF-8) is a 400, as for jobs.
    case(
        "datasets-deep",
        raw_body("/v1/datasets/register", nested(100_000)),
        400,
        "bad_request",
        "body",
    ),
    case("jobs-array", raw_body("/v1/jobs", "[]"), 422, "invalid_request", "object"),
    case(
        "datasets-not-utf8",
        raw_body("/v1/datasets/register", b'{"name": "\xff"}'),
        400,
        "bad_request",
        "body",
    ),
    case(
        "recipe-overrides-deep",
        job({"recipe_overrides": json.loads(nested(200))}),
        422,
        "invalid_request",
        "recipe_overrides",
    ),
    case(
        "override-yaml-deep",
        recipe("loss.gamma=" + "[" * 4000 + "]" * 4000),
        422,
        "invalid_recipe",
        "loss.gamma",
    ),
]
RECIPES = [
    case(
        "lr-nan",
        job({"recipe_overrides": {"solver": {"lr": float("nan")}}}),
        422,
        "invalid_recipe",
        "solver.lr",
    ),
    case("gamma-inf", recipe("loss.gamma=.inf"), 422, "invalid_recipe", "loss.gamma"),
    case("alpha-nan", recipe("loss.alpha=[.nan, 0.1, 0.1]"), 422, "invalid_recipe", "loss.alpha"),
    case(
        "checkpoint-period-10**700",
        recipe("checkpoint_period_iters=" + "9" * 700),
        422,
        "invalid_recipe",
        "checkpoint_period_iters",
    ),
    case("seed-2**32", recipe("seed=4294967296"), 422, "invalid_recipe", "seed"),
    case("metric-unknown", recipe("eval.metric=mAP"), 422, "invalid_recipe", "eval.metric"),
    case("fpn-huge", recipe("model.fpn_channels=1000000"), 422, "invalid_recipe", "fpn_channels"),
    case("holdout-nan", job({"holdout_fraction": float("nan")}), 422, "invalid_request", "holdout"),
    case("priority-2**31", job({"priority": 2**31}), 422, "invalid_request", "priority"),
    case("priority-2**70", job({"priority": -(2**70)}), 422, "invalid_request", "priority"),
    case("devices-2**40", job({"devices": 2**40}), 422, "invalid_request", "devices"),
    case("dataset-id-nul", job({"train_dataset_id": "a\x00"}), 422, "invalid_request", "train"),
    case("override-count", recipe(*["seed=1"] * 1001), 422, "invalid_request", "overrides"),
]
FORMS_HEADERS_QUERIES = [
    case(
        "no-file",
        multipart({"name": (None, "x")}),
        422,
        "invalid_request",
        "file",
    ),
    case(
        "two-files",
        multipart([("file", ("a.zip", b"1")), ("file", ("b.zip", b"2"))]),
        400,
        "bad_request",
        "files",
    ),
    case(
        "no-boundary",
        raw_body("/v1/datasets", b"--x\r\n", "multipart/form-data"),
        400,
        "bad_request",
        "boundary",
    ),
    case(
        "xml",
        raw_body("/v1/datasets", b"<a/>", "application/xml"),
        415,
        "unsupported_media_type",
        "multipart",
    ),
    case(
        "form-name-nul",
        upload(lambda e: make_zip(e.entries), name="a\x00"),
        422,
        "invalid_request",
        "name",
    ),
    case(
        "form-name-201",
        upload(lambda e: make_zip(e.entries), name="n" * 201),
        422,
        "invalid_request",
        "name",
    ),
    case(
        "idempotency-key-201",
        job(headers={"Idempotency-Key": "k" * 201}),
        422,
        "invalid_request",
        "Idempotency-Key",
    ),
    case("no-key", lambda e: ("POST", "/v1/jobs", {"json": {}}), 401, "unauthorized", "X-API-Key"),
    case(
        "last-event-id-text",
        get("/v1/jobs/x/events", **{"Last-Event-ID": "x"}),
        422,
        "invalid_request",
        "Last-Event-ID",
    ),
    case("limit-0", get("/v1/jobs?limit=0"), 422, "invalid_request", "limit"),
    case(
        "offset-2**63",
        get("/v1/datasets?offset=9223372036854775808"),
        422,
        "invalid_request",
        "offset",
    ),
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Entries]:
    root = tmp_path_factory.mktemp("hostile_shapes")
    ann = make_shapes(root, ShapesSpec(num_images=2, size_px=32, seed=0))
    coco = json.loads(ann.read_text())
    images = [
        (f"images/{im['file_name']}", (root / "images" / im["file_name"]).read_bytes())
        for im in coco["images"]
    ]
    return coco, [("annotations.json", ann.read_bytes()), *images]


def _shared_folder(root: Path, coco: dict[str, Any], entries: Entries) -> None:
    """``root/ds``: the dataset, a link out of the root, and a COCO file naming the link."""
    for name, payload in entries:
        (root / "ds" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "ds" / name).write_bytes(payload)
    (root.parent / "outside.png").write_bytes(entries[1][1])
    (root / "ds" / "images" / "link.png").symlink_to(root.parent / "outside.png")
    links = json.loads(json.dumps(coco))
    links["images"][0]["file_name"] = "link.png"
    (root / "ds" / "links.json").write_text(json.dumps(links))


@pytest.fixture
def env(tmp_path: Path, shapes: tuple[dict[str, Any], Entries]) -> Iterator[Env]:
    coco, entries = shapes
    _shared_folder(tmp_path / "shared", coco, entries)
    settings = Settings(
        data_dir=tmp_path / "data",
        api_key_hashes=(hash_key(KEY),),
        dataset_root=tmp_path / "shared",
        max_upload_mb=1,
        max_upload_files=50,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        files = {"file": ("d.zip", make_zip(entries))}
        created = client.post("/v1/datasets", headers=AUTH, files=files)
        assert created.status_code == 201, created.text
        yield Env(client, settings, coco, entries, created.json()["id"])


def _kept(env: Env) -> tuple[int, int, list[str]]:
    """Dataset rows, job rows, and what is under datasets/ and staging/."""
    datasets = env.client.get("/v1/datasets", headers=AUTH).json()["count"]
    jobs = env.client.get("/v1/jobs", headers=AUTH).json()["count"]
    data = env.settings.data_dir
    files = sorted(str(p.relative_to(data)) for p in (data / "staging").rglob("*"))
    files += sorted(p.name for p in (data / "datasets").iterdir())
    return datasets, jobs, files


@pytest.mark.parametrize(
    ("build", "status", "code", "names"),
    [*ARCHIVES, *COCO, *PATHS, *JSON_BODIES, *RECIPES, *FORMS_HEADERS_QUERIES],
)
def test_hostile_input_is_a_clear_4xx_and_nothing_is_kept(
    env: Env, build: Build, status: int, code: str, names: str
) -> None:
    before = _kept(env)
    assert before == (1, 0, [env.dataset_id])
    method, path, kwargs = build(env)
    response = env.client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    said = error["message"] + json.dumps(error["details"])
    assert names in said, said
    assert _kept(env) == before
