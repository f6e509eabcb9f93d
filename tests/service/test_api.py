"""The API over FastAPI's TestClient (the real app, a real SQLite store): auth, bad input, 4xx."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from detector.data.shapes import ShapesSpec, make_shapes
from service.app import create_app
from service.settings import Settings, hash_key
from service.store import repo

KEY = "api-test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "shared"
    root.mkdir()
    return Settings(
        data_dir=tmp_path / "data",
        api_key_hashes=(hash_key(KEY),),
        dataset_root=root,
        max_upload_mb=1,
        max_upload_files=50,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("api_shapes")
    ann = make_shapes(root, ShapesSpec(num_images=6, size_px=64, seed=0))
    return json.loads(ann.read_text()), root / "images"


def _zip(
    data: dict[str, Any] | None, images: Path | None, *, extra: dict[str, bytes] | None = None
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        if data is not None:
            zf.writestr("annotations.json", json.dumps(data))
            for image in data["images"]:
                if images is not None and (images / image["file_name"]).exists():
                    zf.write(images / image["file_name"], f"images/{image['file_name']}")
        for name, payload in (extra or {}).items():
            zf.writestr(name, payload)
    return buffer.getvalue()


def _upload(client: TestClient, payload: bytes, name: str = "ds") -> Any:
    return client.post(
        "/v1/datasets", headers=AUTH, files={"file": ("d.zip", payload)}, data={"name": name}
    )


def _leftovers(settings: Settings) -> list[Path]:
    return [*(settings.data_dir / "datasets").glob("*"), *(settings.data_dir / "staging").glob("*")]


def test_auth_is_required_except_for_health(client: TestClient) -> None:
    assert client.get("/health/live").status_code == 200
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = client.get("/v1/datasets", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/datasets", headers=AUTH).status_code == 200


def test_upload_read_list_delete(
    client: TestClient, settings: Settings, coco: tuple[dict[str, Any], Path]
) -> None:
    data, images = coco
    created = _upload(client, _zip(data, images))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["num_images"] == 6 and body["report"]["num_boxes"] == body["num_boxes"] > 0
    assert [c["name"] for c in body["categories"]] == ["circle", "square", "triangle"]
    assert client.get(f"/v1/datasets/{body['id']}", headers=AUTH).json()["id"] == body["id"]
    assert client.get("/v1/datasets", headers=AUTH).json()["count"] == 1
    assert client.delete(f"/v1/datasets/{body['id']}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/datasets/{body['id']}", headers=AUTH).status_code == 404
    assert _leftovers(settings) == []


def test_invalid_dataset_is_422_with_the_report_and_nothing_kept(
    client: TestClient, settings: Settings, coco: tuple[dict[str, Any], Path]
) -> None:
    data, images = coco
    broken = {
        **data,
        "images": [
            *data["images"],
            {"id": 999, "file_name": "missing.png", "width": 64, "height": 64},
        ],
    }
    response = _upload(client, _zip(broken, images))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset"
    (missing,) = [i for i in error["details"]["issues"] if i["code"] == "missing_image"]
    assert missing["image_id"] == 999
    # Its message names the file as the dataset does, not where the server keeps it.
    assert missing["message"] == "file not found: images/missing.png", missing["message"]
    assert str(settings.data_dir) not in response.text
    assert _leftovers(settings) == []


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ("../evil.txt", "unsafe_archive"),
        ("/abs/evil.txt", "unsafe_archive"),
        ("images/../../x", "unsafe_archive"),
    ],
)
def test_zip_entries_escaping_the_folder_are_refused(
    client: TestClient, settings: Settings, coco: tuple[dict[str, Any], Path], entry: str, code: str
) -> None:
    data, images = coco
    response = _upload(client, _zip(data, images, extra={entry: b"x"}))
    assert response.status_code == 422 and response.json()["error"]["code"] == code
    assert _leftovers(settings) == []
    assert not (settings.data_dir.parent / "evil.txt").exists()


def test_oversize_and_too_many_files_and_not_a_zip(
    client: TestClient, settings: Settings, coco: tuple[dict[str, Any], Path]
) -> None:
    data, images = coco
    big = _upload(client, _zip(data, images, extra={"images/big.bin": b"0" * (2 << 20)}))
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    many = _upload(client, _zip(data, images, extra={f"images/x{i}.txt": b"" for i in range(60)}))
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_files"
    junk = _upload(client, b"this is not a zip")
    assert junk.status_code == 422 and junk.json()["error"]["code"] == "invalid_archive"
    empty = _upload(client, _zip(None, None, extra={"readme.txt": b"hi"}))
    assert empty.status_code == 422 and "COCO JSON" in empty.json()["error"]["message"]
    assert _leftovers(settings) == []


def test_register_folder_only_under_the_root(
    client: TestClient, settings: Settings, coco: tuple[dict[str, Any], Path]
) -> None:
    data, images = coco
    assert settings.dataset_root is not None
    folder = settings.dataset_root / "cells"
    (folder / "images").mkdir(parents=True)
    for image in data["images"]:
        (folder / "images" / image["file_name"]).write_bytes(
            (images / image["file_name"]).read_bytes()
        )
    (folder / "instances.json").write_text(json.dumps(data))
    ok = client.post(
        "/v1/datasets/register",
        headers=AUTH,
        json={"name": "cells", "annotations": "cells/instances.json", "images": "cells/images"},
    )
    assert ok.status_code == 201 and ok.json()["source"] == "folder"
    outside = client.post(
        "/v1/datasets/register",
        headers=AUTH,
        json={"name": "x", "annotations": "../../etc/passwd", "images": "cells/images"},
    )
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "path_not_allowed"
    bad_type = client.post(
        "/v1/datasets/register", headers=AUTH, json={"name": 3, "annotations": "a"}
    )
    assert bad_type.status_code == 422 and bad_type.json()["error"]["code"] == "invalid_request"
    text = client.post(
        "/v1/datasets", headers={**AUTH, "Content-Type": "text/plain"}, content=b"hi"
    )
    assert text.status_code == 415


def test_jobs_validation_idempotency_cancel_and_404s(
    client: TestClient, coco: tuple[dict[str, Any], Path]
) -> None:
    data, images = coco
    ds = _upload(client, _zip(data, images)).json()
    body = {"train_dataset_id": ds["id"], "recipe": "shapes_tiny", "overrides": ["loss.gamma=1.5"]}
    first = client.post("/v1/jobs", headers={**AUTH, "Idempotency-Key": "k1"}, json=body)
    assert first.status_code == 201 and first.json()["recipe"]["loss"]["gamma"] == 1.5
    again = client.post("/v1/jobs", headers={**AUTH, "Idempotency-Key": "k1"}, json=body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    clash = client.post(
        "/v1/jobs", headers={**AUTH, "Idempotency-Key": "k1"}, json={**body, "priority": 5}
    )
    assert clash.status_code == 409

    bad = client.post("/v1/jobs", headers=AUTH, json={**body, "overrides": ["loss.gammma=1"]})
    assert bad.status_code == 422 and "loss.gammma: unknown key" in bad.json()["error"]["message"]
    alpha = client.post(
        "/v1/jobs", headers=AUTH, json={**body, "overrides": ["loss.alpha=[0.5, 0.5]"]}
    )
    assert alpha.status_code == 422 and "3 classes" in alpha.json()["error"]["message"]
    unknown = client.post("/v1/jobs", headers=AUTH, json={**body, "recipe": "nope"})
    assert unknown.status_code == 422 and "shapes_tiny" in unknown.json()["error"]["message"]
    wrong_type = client.post("/v1/jobs", headers=AUTH, json={**body, "priority": "high"})
    assert (
        wrong_type.status_code == 422
        and wrong_type.json()["error"]["details"][0]["loc"][-1] == "priority"
    )
    malformed = client.post(
        "/v1/jobs", headers={**AUTH, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert malformed.status_code == 422
    missing = client.post("/v1/jobs", headers=AUTH, json={**body, "train_dataset_id": "nope"})
    assert missing.status_code == 404

    job_id = first.json()["id"]
    assert (
        client.delete(f"/v1/datasets/{ds['id']}", headers=AUTH).status_code == 409
    )  # a queued job uses it
    listed = client.get("/v1/jobs", headers=AUTH, params={"status": "queued"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job_id
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 409
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=AUTH).json()
    assert metrics["history"] == [] and metrics["latest"] is None
    for path in (
        "/v1/jobs/nope",
        "/v1/jobs/nope/metrics",
        "/v1/jobs/nope/events",
        "/v1/jobs/nope/logs",
    ):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    assert client.get("/v1/jobs", headers=AUTH, params={"status": "bogus"}).status_code == 422


def test_workers_lists_the_live_ones_with_their_devices_and_jobs(
    client: TestClient, coco: tuple[dict[str, Any], Path]
) -> None:
    dataset = _upload(client, _zip(*coco)).json()["id"]
    body = {"train_dataset_id": dataset, "recipe": "shapes_tiny"}
    alone = client.post("/v1/jobs", headers=AUTH, json=body).json()
    assert alone["waiting_for"].startswith("no live worker")
    now = datetime.now(UTC)
    sessions = client.app.state.db.write  # type: ignore[attr-defined]
    with sessions.begin() as session:
        repo.worker_seen(session, worker_id="gpu-box", host="a", pid=7, devices=4, now=now)
        repo.worker_seen(
            session, worker_id="gone", host="b", pid=8, devices=8, now=now - timedelta(hours=1)
        )
    live = client.get("/v1/workers", headers=AUTH).json()
    assert (live["count"], live["max_devices"]) == (1, 4)  # the stale 8-GPU worker takes nothing
    assert live["data"][0]["id"] == "gpu-box" and live["data"][0]["alive"] is True
    every = client.get("/v1/workers", headers=AUTH, params={"stale": "true"}).json()
    assert [(w["id"], w["devices"], w["alive"]) for w in every["data"]] == [
        ("gpu-box", 4, True),
        ("gone", 8, False),
    ]
    assert every["max_devices"] == 4
    # A queued job says why it waits: here, for a worker with 8 GPUs.
    big = client.post("/v1/jobs", headers=AUTH, json={**body, "devices": 8}).json()
    assert "asks for 8 devices" in big["waiting_for"] and "at most 4" in big["waiting_for"]
    fits = client.get(f"/v1/jobs/{alone['id']}", headers=AUTH).json()
    assert fits["status"] == "queued" and fits["waiting_for"] is None
    listed = client.get("/v1/jobs", headers=AUTH).json()["data"]
    assert {j["id"]: j["waiting_for"] is None for j in listed} == {
        big["id"]: False,
        alone["id"]: True,
    }
    assert client.get("/v1/workers").status_code == 401


def test_a_405_allows_every_method_of_the_path(client: TestClient) -> None:
    # /v1/models/{id} is two routes (GET, DELETE): Starlette's own 405 named only the first.
    response = client.put("/v1/models/some-id", headers=AUTH)
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_a_job_whose_datasets_do_not_fit_is_refused_at_creation(
    client: TestClient, coco: tuple[dict[str, Any], Path]
) -> None:
    data, images = coco
    train = _upload(client, _zip(data, images)).json()
    renamed = {**data, "categories": [{**c, "name": c["name"] + "x"} for c in data["categories"]]}
    other = _upload(client, _zip(renamed, images), name="other").json()
    body = {"train_dataset_id": train["id"], "val_dataset_id": other["id"]}
    mismatch = client.post("/v1/jobs", headers=AUTH, json=body)
    assert mismatch.status_code == 422 and mismatch.json()["error"]["code"] == "category_mismatch"
    alpha = {"train_dataset_id": train["id"], "overrides": ["loss.alpha=[0.25, 0.25]"]}
    wrong = client.post("/v1/jobs", headers=AUTH, json=alpha)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_recipe", (
        wrong.text
    )
    assert "loss.alpha has 2 values" in wrong.json()["error"]["message"]
