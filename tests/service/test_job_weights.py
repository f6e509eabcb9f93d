"""Initial weights over HTTP: torchvision names and ``model:<id>`` pass, server paths do not."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from detector.data.shapes import ShapesSpec, make_shapes
from service.app import create_app
from service.settings import Settings, hash_key
from service.store import repo
from service.store.db import make_engine, session_factory

KEY = "weights-test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", api_key_hashes=(hash_key(KEY),))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def body(client: TestClient, tmp_path: Path) -> dict[str, object]:
    """A job body on an uploaded dataset (registered from a folder would need a root)."""
    ann = make_shapes(tmp_path / "shapes", ShapesSpec(num_images=3, size_px=64, seed=0))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.write(ann, "annotations.json")
        for image in json.loads(ann.read_text())["images"]:
            zf.write(
                tmp_path / "shapes" / "images" / image["file_name"], f"images/{image['file_name']}"
            )
    uploaded = client.post(
        "/v1/datasets",
        headers=AUTH,
        files={"file": ("d.zip", buffer.getvalue())},
        data={"name": "d"},
    )
    assert uploaded.status_code == 201, uploaded.text
    return {"train_dataset_id": uploaded.json()["id"], "recipe": "shapes_tiny"}


def _post(client: TestClient, body: dict[str, object], *overrides: str) -> Any:
    return client.post("/v1/jobs", headers=AUTH, json={**body, "overrides": list(overrides)})


def test_torchvision_names_are_accepted_and_checked(
    client: TestClient, body: dict[str, object]
) -> None:
    ok = _post(client, body, "model.norm=frozen_bn", "model.backbone_weights=imagenet")
    assert ok.status_code == 201 and ok.json()["recipe"]["model"]["backbone_weights"] == "imagenet"
    # shapes_tiny trains GroupNorm from scratch: nowhere to put ImageNet's BatchNorm statistics.
    gn = _post(client, body, "model.backbone_weights=imagenet")
    assert gn.status_code == 422 and "norm=gn" in gn.json()["error"]["message"]
    wrong = _post(client, body, "model.backbone_weights=ResNet50_Weights.IMAGENET1K_V2")
    assert wrong.status_code == 422 and "model.backbone_weights" in wrong.json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "path"),
    [("weights", "/etc/passwd"), ("backbone_weights", "../../data/jobs/x/model.safetensors"),
     ("backbone_weights", "model:abc")],
)  # fmt: skip
def test_server_paths_are_refused_naming_the_field(
    client: TestClient, body: dict[str, object], field: str, path: str
) -> None:
    refused = _post(client, body, f"model.{field}={path}")
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_recipe" and error["details"] == {"keys": [f"model.{field}"]}
    assert f"model.{field}" in error["message"]


def test_a_model_of_ours_resolves_to_its_file(
    client: TestClient, body: dict[str, object], settings: Settings
) -> None:
    missing = _post(client, body, "model.weights=model:nope")
    assert missing.status_code == 422 and "no model 'nope'" in missing.json()["error"]["message"]
    job = _post(client, body).json()
    weights = settings.data_dir / "jobs" / job["id"] / "model.safetensors"
    engine = make_engine(settings.db_url)
    try:
        with session_factory(engine).begin() as session:
            model = repo.create_model(
                session, job_id=job["id"], name="m", weights_path=str(weights),
                weights_sha256="0" * 64, weights_bytes=1, classes=[], recipe={},
                score_thresholds={}, metrics=None,
                metrics_split=None, now=datetime.now(UTC),
            )  # fmt: skip
            model_id = model.id
    finally:
        engine.dispose()
    tuned = _post(client, body, f"model.weights=model:{model_id}")
    assert tuned.status_code == 201, tuned.text
    assert tuned.json()["recipe"]["model"]["weights"] == str(weights.resolve())
