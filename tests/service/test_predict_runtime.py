"""The predict endpoint under onnxruntime against PyTorch: the same requests, the same answers.

Two apps over one data directory and one model trained for real (two iterations: parity needs
a real network, not a good one), differing only in ``predict_runtime``; every per-request
option (thresholds, NMS, detection cap, class filter, tiling) and a batch of differently sized
images go through both. Score threshold 0 and a high cap, so that no detection sits at a
threshold a rounding difference could move it across.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from detector.onnx_network import OnnxNetwork, cache_path
from service.app import create_app
from service.settings import Settings, hash_key
from service.storage import Storage
from tests.service.trained_job import train_and_settle

pytestmark = pytest.mark.slow

KEY = "runtime-test-key"
AUTH = {"X-API-Key": KEY}
BOX_ATOL_PX = 0.01
SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def clients(
    shapes: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    data_dir = tmp_path_factory.mktemp("runtime")
    with (
        TestClient(create_app(_settings(data_dir, shapes, "torch"))) as torch_client,
        TestClient(create_app(_settings(data_dir, shapes, "onnxruntime"))) as ort_client,
    ):
        yield {"torch": torch_client, "onnxruntime": ort_client}


def _settings(data_dir: Path, shapes: Path, runtime: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        api_key_hashes=(hash_key(KEY),),
        dataset_root=shapes,
        predict_runtime=runtime,
        predict_threads=2,
    )


@pytest.fixture(scope="module")
def model(
    clients: dict[str, TestClient], shapes: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    client = clients["torch"]
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    ids = []
    for split in ("train", "val"):
        body = {"name": split, "annotations": f"annotations/instances_{split}.json"}
        response = client.post(
            "/v1/datasets/register", headers=AUTH, json={**body, "images": "images"}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    body = {"train_dataset_id": ids[0], "val_dataset_id": ids[1]}
    job = client.post("/v1/jobs", headers=AUTH, json=body).json()
    train_and_settle(settings, job["id"], shapes, tmp_path_factory.mktemp("runtime_run"))
    (row,) = client.get("/v1/models", headers=AUTH).json()["data"]
    return dict(row)


def _files(shapes: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Three validation images as uploaded, one of them resized to 150x70 (another padded
    size in the same batch)."""
    paths = sorted((shapes / "images").glob("val_*.png"))[:3]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    buffer = io.BytesIO()
    Image.open(paths[2]).convert("RGB").resize((150, 70)).save(buffer, format="PNG")
    files[2] = ("files", ("wide.png", buffer.getvalue(), "image/png"))
    return files


ALL: dict[str, str | list[str]] = {"score_threshold": "0", "max_detections": "10000"}
OPTIONS: list[dict[str, str | list[str]]] = [
    {},  # best-F1 thresholds
    ALL,
    {**ALL, "nms_iou": "0.3"},
    {"score_threshold": "0", "max_detections": "3"},
    {**ALL, "class_ids": ["1", "3"]},
    # NMS at IoU 1 keeps all but identical boxes: the merge of overlapping tiles then does
    # not depend on the order of the (many, near-equal) scores of this barely trained model.
    {**ALL, "nms_iou": "1", "tile_size": "64", "tile_overlap": "0.5"},
]


@pytest.mark.parametrize("fields", OPTIONS, ids=lambda f: ",".join(f) or "defaults")
def test_both_runtimes_answer_the_same(
    clients: dict[str, TestClient],
    model: dict[str, Any],
    shapes: Path,
    fields: dict[str, str | list[str]],
) -> None:
    answers = {}
    for runtime, client in clients.items():
        response = client.post(
            f"/v1/models/{model['id']}/predict",
            headers=AUTH,
            files=_files(shapes),
            data=fields,
        )
        assert response.status_code == 200, response.text
        answers[runtime] = [im["detections"] for im in response.json()["images"]]
    ref, ours = answers["torch"], answers["onnxruntime"]
    assert len(ref) == len(ours) == 3
    for a, b in zip(ref, ours, strict=True):
        assert len(a) == len(b)
        unmatched = _unmatched(a, b)
        assert not unmatched, f"{len(unmatched)} of {len(a)} PyTorch detections unmatched"
    if fields.get("class_ids"):
        assert {d["category_id"] for dets in ours for d in dets} <= {1, 3}
    if fields.get("max_detections") == "3":
        assert all(len(dets) == 3 for dets in ours)
    if fields:
        assert sum(map(len, ours)) > 0


def _unmatched(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The detections of ``a`` with no detection of ``b`` of the same class, box and score
    (within the tolerances), each of ``b`` used once. Order-free: this barely trained model
    scores many boxes alike, and the runtimes' rounding may swap neighbours in the order."""
    free = list(b)
    missing = []
    for x in a:
        match = next(
            (
                y
                for y in free
                if y["category_id"] == x["category_id"]
                and abs(y["score"] - x["score"]) <= SCORE_ATOL
                and max(abs(p - q) for p, q in zip(x["bbox"], y["bbox"], strict=True))
                <= BOX_ATOL_PX
            ),
            None,
        )
        if match is None:
            missing.append(x)
        else:
            free.remove(match)
    return missing


def test_onnxruntime_really_serves_from_the_cached_graph(
    clients: dict[str, TestClient], model: dict[str, Any], shapes: Path
) -> None:
    client = clients["onnxruntime"]
    response = client.post(
        f"/v1/models/{model['id']}/predict", headers=AUTH, files=_files(shapes)[:1]
    )
    assert response.status_code == 200, response.text
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    storage = Storage(settings.data_dir)
    weights = storage.model_file(model["job_id"])
    runner = client.app.state.models.get(model["id"], weights, model["weights_bytes"])  # type: ignore[attr-defined]
    assert isinstance(runner.predictor.network, OnnxNetwork)
    folder = storage.export_file(model["id"], "onnx").parent
    assert runner.predictor.network.path == cache_path(folder, model["weights_sha256"])
    torch_runner = clients["torch"].app.state.models.get(  # type: ignore[attr-defined]
        model["id"], weights, model["weights_bytes"]
    )
    assert not isinstance(torch_runner.predictor.network, OnnxNetwork)
    # Deleting the model takes its cached graph with it.
    assert client.delete(f"/v1/models/{model['id']}", headers=AUTH).status_code == 204
    assert not folder.exists()
