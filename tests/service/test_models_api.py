"""The models API over TestClient: a really trained model, registered by the worker's own code.

Predict matches the ``Predictor`` and ``retinanet predict``; options filter as they say; bad
images get 4xx and the service keeps serving; a full queue answers 503 with Retry-After;
concurrent requests share forward passes; the cache evicts; ONNX export passes its check.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from detector import PredictOptions, Predictor, read_rgb
from detector.artifact import read_model_file
from service.app import create_app
from service.inference import BatchingRunner
from service.settings import Settings, hash_key
from service.storage import Storage
from tests.service.trained_job import succeeded_job
from tests.trained import TrainedRun

pytestmark = pytest.mark.slow

KEY = "models-test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def settings(trained_run: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("models_api"),
        api_key_hashes=(hash_key(KEY),),
        dataset_root=trained_run.shapes,
        model_cache_models=1,
        # Compared exactly with Predictor (PyTorch); onnxruntime's own test compares runtimes.
        predict_runtime="torch",
        predict_queue_size=1,
        predict_max_files=4,
        predict_max_pixels=200_000,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def model(client: TestClient, settings: Settings, trained_run: TrainedRun) -> dict[str, Any]:
    job_id = succeeded_job(client, settings, trained_run, AUTH)
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["status"] == "succeeded"
    rows = client.get("/v1/models", headers=AUTH).json()["data"]
    (row,) = [m for m in rows if m["job_id"] == job_id]
    return dict(row)


def _images(trained_run: TrainedRun, n: int = 2) -> list[Path]:
    return sorted((trained_run.shapes / "images").glob("val_*.png"))[:n]


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def _predict(
    client: TestClient, model_id: str, files: Any, path: str = "predict", **fields: Any
) -> Any:
    return client.post(f"/v1/models/{model_id}/{path}", headers=AUTH, files=files, data=fields)


def test_model_card_and_weights(client: TestClient, model: dict[str, Any], tmp_path: Path) -> None:
    assert [c["name"] for c in model["classes"]] == ["circle", "square", "triangle"]
    assert model["metrics_split"] == "val" and len(model["metrics"]["summary"]) == 12
    assert any(c["score_threshold"] is not None for c in model["classes"])
    assert client.get(f"/v1/models/{model['id']}", headers=AUTH).json() == model
    response = client.get(f"/v1/models/{model['id']}/weights", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["x-checksum-sha256"] == model["weights_sha256"]
    path = tmp_path / "downloaded.safetensors"
    path.write_bytes(response.content)
    card, state = read_model_file(path)  # safetensors: no pickle involved
    assert [c.name for c in card.classes] == ["circle", "square", "triangle"] and state
    assert client.get("/v1/models/nope", headers=AUTH).status_code == 404
    assert client.get("/v1/models", headers={}).status_code == 401


def test_predict_matches_the_predictor_and_the_cli(
    client: TestClient, model: dict[str, Any], trained_run: TrainedRun, settings: Settings
) -> None:
    paths = _images(trained_run)
    response = _predict(client, model["id"], _files(paths), score_threshold="0.1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [im["file"] for im in body["images"]] == [p.name for p in paths]
    weights = Storage(settings.data_dir).model_file(model["job_id"])
    expected = Predictor.load(weights).predict(
        [read_rgb(p) for p in paths], PredictOptions(score_threshold=0.1)
    )
    got = [im["detections"] for im in body["images"]]
    assert got == [[d.model_dump(mode="json") for d in dets] for dets in expected]
    assert sum(map(len, got)) > 0
    cli = subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", str(weights), str(paths[0]),
         "--score-threshold", "0.1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # One image alone vs two in a batch: the same up to float rounding of the convolutions.
    _assert_same(json.loads(cli.stdout)[0]["detections"], got[0])


def _assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [d["category_id"] for d in a] == [d["category_id"] for d in b]
    for x, y in zip(a, b, strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1e-4)
        assert x["bbox"] == pytest.approx(y["bbox"], abs=1e-2)


def test_options_filter_as_they_say(
    client: TestClient, model: dict[str, Any], trained_run: TrainedRun
) -> None:
    files = _files(_images(trained_run))
    everything = _predict(
        client, model["id"], files, score_threshold="0", max_detections="10000"
    ).json()["images"]
    high = _predict(client, model["id"], files, score_threshold="0.3").json()["images"]
    for a, b in zip(everything, high, strict=True):
        assert b["detections"] == [d for d in a["detections"] if d["score"] >= 0.3]
    circles = _predict(client, model["id"], files, score_threshold="0", class_ids="1").json()
    for a, b in zip(everything, circles["images"], strict=True):
        # Filtered before the recipe's cap of 100, so rare classes are never crowded out.
        assert b["detections"] == [d for d in a["detections"] if d["category_id"] == 1][:100]
    capped = _predict(client, model["id"], files, score_threshold="0", max_detections="2").json()
    assert all(len(im["detections"]) <= 2 for im in capped["images"])
    thresholds = {c["id"]: c["score_threshold"] for c in model["classes"]}
    default = _predict(client, model["id"], files).json()["images"]  # best-F1 thresholds
    for a, b in zip(everything, default, strict=True):
        assert b["detections"] == [
            d for d in a["detections"] if d["score"] >= (thresholds[d["category_id"]] or 0.05)
        ]
    png = _predict(client, model["id"], files[:1], path="predict/png")
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (96, 96)
    for fields, code in (
        ({"class_ids": "9"}, "invalid_request"),
        ({"score_threshold": "high"}, "invalid_request"),
        ({"nms_iou": "2"}, "invalid_request"),
        ({"path": "predict/png"}, "invalid_request"),  # two images
    ):
        response = _predict(client, model["id"], files, **fields)
        assert response.status_code == 422 and response.json()["error"]["code"] == code, fields


def test_bad_images_get_clear_4xx_and_the_service_keeps_serving(
    client: TestClient, model: dict[str, Any], trained_run: TrainedRun
) -> None:
    good = _images(trained_run)[0].read_bytes()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(jpeg, "JPEG")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    big = io.BytesIO()
    Image.new("L", (600, 600)).save(big, "PNG")  # 360k pixels > the 200k limit, a tiny file
    cases = {
        "empty.png": (b"", 422, "invalid_image"),
        "text.png": (b"hello, not an image", 415, "unsupported_image"),
        "truncated.jpg": (jpeg.getvalue()[:300], 422, "invalid_image"),
        "anim.gif": (gif.getvalue(), 415, "unsupported_image"),
        "bomb.png": (big.getvalue(), 413, "image_too_large"),
    }
    for name, (payload, status, code) in cases.items():
        response = _predict(client, model["id"], [("files", (name, payload, "image/png"))])
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == code and name in error["message"]
    too_many = [("files", (f"{i}.png", good, "image/png")) for i in range(5)]
    response = _predict(client, model["id"], too_many)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_files"
    assert _predict(client, "no-such-model", too_many[:1]).status_code == 404
    no_files = client.post(f"/v1/models/{model['id']}/predict", headers=AUTH, data={"x": "1"})
    assert no_files.status_code in (415, 422)
    assert _predict(client, model["id"], too_many[:1]).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(
    client: TestClient, settings: Settings, model: dict[str, Any], trained_run: TrainedRun
) -> None:
    image = read_rgb(_images(trained_run)[0])
    weights = Storage(settings.data_dir).model_file(model["job_id"])
    cache = client.app.state.models  # type: ignore[attr-defined]
    runner = cache.get(model["id"], weights, model["weights_bytes"])
    # Occupy the model: a large image cut into many small tiles, submitted directly.
    big = image.repeat(1, 10, 10)  # 960 x 960: 225 tiles of 64 px, each seen at 96 px
    busy = runner.submit([big], PredictOptions(tile_size=64, tile_overlap=0.0))
    while not busy.running():
        time.sleep(0.001)
    files = _files(_images(trained_run, 1))
    queued: dict[str, Any] = {}
    waiting = threading.Thread(
        target=lambda: queued.setdefault("response", _predict(client, model["id"], files))
    )
    waiting.start()
    while runner.pending() < 1 and not busy.done():
        time.sleep(0.001)
    assert not busy.done(), "the busy request finished too early for this test"
    refused = _predict(client, model["id"], files)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    busy.result(timeout=300)
    waiting.join(timeout=300)
    assert queued["response"].status_code == 200


def test_concurrent_requests_share_forward_passes(
    settings: Settings, model: dict[str, Any], trained_run: TrainedRun
) -> None:
    weights = Storage(settings.data_dir).model_file(model["job_id"])
    runner = BatchingRunner(Predictor.load(weights), max_batch=8, max_delay_s=0.05, queue_size=8)
    image = read_rgb(_images(trained_run)[0])
    busy = runner.submit([image.repeat(1, 8, 8)], PredictOptions(tile_size=64, tile_overlap=0.0))
    while not busy.running():
        time.sleep(0.001)
    futures = [runner.submit([image], PredictOptions(score_threshold=0.1)) for _ in range(4)]
    results = [f.result(timeout=300) for f in futures]
    busy.result(timeout=300)
    assert runner.batches == 2  # the busy request, then the four together
    assert all(r == results[0] for r in results)
    alone = runner.predictor.predict([image], PredictOptions(score_threshold=0.1))
    _assert_same([d.model_dump() for d in results[0][0]], [d.model_dump() for d in alone[0]])
    runner.close()


def test_cache_evicts_and_export_and_delete(
    client: TestClient, settings: Settings, model: dict[str, Any], trained_run: TrainedRun,
    tmp_path: Path,
) -> None:  # fmt: skip
    second_job = succeeded_job(client, settings, trained_run, AUTH)
    models = client.get("/v1/models", headers=AUTH).json()
    assert models["count"] == 2
    (second,) = [m for m in models["data"] if m["job_id"] == second_job]
    files = _files(_images(trained_run, 1))
    assert _predict(client, model["id"], files).status_code == 200
    assert _predict(client, second["id"], files).status_code == 200
    assert client.app.state.models.loaded() == [second["id"]]  # type: ignore[attr-defined]

    response = client.post(f"/v1/models/{second['id']}/export", headers=AUTH, json={})
    assert response.status_code == 200, response.text
    export = response.json()
    assert export["parity"]["torch_detections"] == export["parity"]["matched"] > 0
    assert "agree" in export["parity"]["summary"]
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(client.get(export["download"], headers=AUTH).content)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"images": torch.rand(1, 3, 96, 96).numpy()})
    assert boxes.shape[2] == 4 and scores.shape[2] == 3
    bad = client.post(f"/v1/models/{second['id']}/export", headers=AUTH, json={"format": "tf"})
    assert bad.status_code == 422

    assert client.delete(f"/v1/models/{second['id']}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/models/{second['id']}", headers=AUTH).status_code == 404
    assert client.get(export["download"], headers=AUTH).status_code == 404
    assert not Storage(settings.data_dir).model_file(second_job).exists()
    assert client.get(f"/v1/jobs/{second_job}", headers=AUTH).json()["status"] == "succeeded"
