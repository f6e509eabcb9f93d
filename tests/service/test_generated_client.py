"""A client generated from the live ``/openapi.json`` (openapi-python-client, a code generator
that runs offline) drives the whole loop against a real server, and agrees with the
hand-written ``service.client.Client`` on every call: upload, job create and its replay, get,
events, metrics, logs, cancel, model get, predict (JSON and PNG), weights download, export.
Every error answer it meets parses into its documented type (``ErrorBody``, its ``details``
typed by code), and recipes, metrics and parity reports into their models."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from detector.data.shapes import ShapesSpec, make_shapes_splits
from service.app import create_app
from service.client import ApiClientError, Client
from service.settings import Settings, hash_key
from tests.service.e2e_support import free_port
from tests.service.trained_job import train_and_settle

pytestmark = pytest.mark.slow

KEY = "generated-client-key"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
# The generator reads images as files; event streams have no "schema" (see service.api.jobs).
CONFIG = "post_hooks: []\ncontent_type_overrides:\n  image/png: application/octet-stream\n"


@dataclass(frozen=True)
class Served:
    url: str
    settings: Settings
    shapes: Path
    workdir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app under uvicorn on a real socket (in this process: the test settles the job)."""
    shapes = tmp_path_factory.mktemp("gen_shapes")
    spec = ShapesSpec(num_images=1, size_px=96, seed=3)
    make_shapes_splits(shapes, spec, splits=[("train", 4), ("val", 2)])
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("gen_data"),
        api_key_hashes=(hash_key(KEY),),
        predict_max_files=2,
        predict_max_pixels=200_000,
        worker_stale_s=3600,
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", settings, shapes, tmp_path_factory.mktemp("run"))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def gen(served: Served, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The client package, generated now from what the server documents."""
    tmp = tmp_path_factory.mktemp("generated")
    (tmp / "openapi.json").write_text(httpx.get(f"{served.url}/openapi.json").text)
    (tmp / "config.yaml").write_text(CONFIG)
    command = [str(GENERATOR), "generate", "--path", str(tmp / "openapi.json"), "--meta", "none"]
    command += ["--output-path", str(tmp / "genclient"), "--config", str(tmp / "config.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout  # nothing of the document was skipped
    sys.path.insert(0, str(tmp))
    return importlib.import_module("genclient")


class Generated:
    """Calls into the generated package: ``g("jobs.get_job", job_id=...)`` is the parsed answer
    (``g.raw`` the httpx response), the way its users call it."""

    def __init__(self, package: ModuleType, url: str, key: str | None = KEY) -> None:
        self.package = package
        auth = {"token": key or "", "prefix": "", "auth_header_name": "X-API-Key"}
        self.client = package.AuthenticatedClient(base_url=url, timeout=120, **auth)
        self.models = importlib.import_module(f"{package.__name__}.models")
        self.types = importlib.import_module(f"{package.__name__}.types")

    def __call__(self, operation: str, **kwargs: Any) -> Any:
        module = importlib.import_module(f"{self.package.__name__}.api.{operation}")
        response = module.sync_detailed(client=self.client, **kwargs)
        self.raw = response
        return response.parsed

    def file(self, data: bytes, name: str, mime: str) -> Any:
        return self.types.File(payload=io.BytesIO(data), file_name=name, mime_type=mime)


def _plain(value: Any) -> Any:
    """JSON values with timestamps as datetimes: both clients' renderings of one answer."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        return datetime.fromisoformat(value)
    return value


def agree(generated: Any, hand: Any, *, ignore: tuple[str, ...] = ()) -> None:
    ours, theirs = _plain(generated), _plain(hand)
    for key in ignore:
        ours.pop(key, None)
        theirs.pop(key, None)
    assert ours == theirs


def error_agrees(g: Generated, parsed: Any, status: int, call: Any) -> str:
    """The generated client parsed an error answer into ``ErrorBody``; the hand-written one
    raises the same status and code."""
    assert isinstance(parsed, g.models.ErrorBody), parsed
    assert g.raw.status_code == status, g.raw.content
    with pytest.raises(ApiClientError) as caught:
        call()
    assert (caught.value.status, caught.value.code) == (status, parsed.error.code)
    return str(parsed.error.code)


def _zip(shapes: Path, split: str) -> bytes:
    coco = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("annotations.json", json.dumps(coco))
        for image in coco["images"]:
            zf.write(shapes / "images" / image["file_name"], f"images/{image['file_name']}")
    return buffer.getvalue()


def _events(stream: bytes) -> list[dict[str, Any]]:
    """The SSE text as the hand-written client yields it: id, event, data (parsed)."""
    events: list[dict[str, Any]] = []
    event: dict[str, str] = {}
    for line in stream.decode().splitlines():
        if not line:
            if "data" in event:
                events.append({**event, "data": json.loads(event["data"])})
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")
    return events


def test_the_generated_client_drives_the_loop(
    served: Served, gen: ModuleType, tmp_path: Path
) -> None:
    g, m = Generated(gen, served.url), Generated(gen, served.url).models
    with Client(served.url, api_key=KEY) as hand:
        # Upload (the generated client's multipart), then both read it alike.
        train_zip = g.file(_zip(served.shapes, "train"), "train.zip", "application/zip")
        train = g("datasets.upload_dataset", body=m.DatasetUpload(file=train_zip, name="train"))
        assert g.raw.status_code == 201 and isinstance(train, m.DatasetPublic), g.raw.content
        assert train.report.annotations_path == "annotations.json"  # relative, not the server's
        agree(train, hand.dataset(train.id))
        val = hand.upload_dataset(
            served.shapes / "annotations/instances_val.json", served.shapes / "images", name="val"
        )
        agree(g("datasets.get_dataset", dataset_id=val["id"]), val)
        bad = g("datasets.upload_dataset", body=m.DatasetUpload(file=g.file(b"no", "x.zip", "z")))
        error_agrees(g, bad, 422, lambda: hand._call("POST", "/v1/datasets", files={"file": b"no"}))
        assert isinstance(bad.error.details, m.ArchiveEntry), bad.error.details  # typed details

        # A job, its idempotent replay (200, the same job), and the hand-written replay.
        body = m.JobCreate(train_dataset_id=train.id, val_dataset_id=val["id"])
        job = g("jobs.create_job", body=body, idempotency_key="loop-1")
        assert g.raw.status_code == 201 and isinstance(job, m.JobPublic)
        replay = g("jobs.create_job", body=body, idempotency_key="loop-1")
        assert g.raw.status_code == 200 and replay.id == job.id
        same = hand.create_job(
            idempotency_key="loop-1", train_dataset_id=train.id, val_dataset_id=val["id"]
        )
        agree(replay, same)
        missing = g("jobs.get_job", job_id="no-such-job")
        error_agrees(g, missing, 404, lambda: hand.job("no-such-job"))
        bad_job = g("jobs.create_job", body=m.JobCreate(train_dataset_id="x", devices=0))
        error_agrees(g, bad_job, 422, lambda: hand.create_job(train_dataset_id="x", devices=0))
        (field,) = bad_job.error.details
        assert isinstance(field, m.FieldError) and field.loc == ["body", "devices"], field

        train_and_settle(served.settings, job.id, served.shapes, served.workdir)

        done = g("jobs.get_job", job_id=job.id)
        assert str(done.status) == "succeeded"
        agree(done, hand.job(job.id))
        g("jobs.stream_events", job_id=job.id)
        assert g.raw.status_code == 200
        assert g.raw.headers["content-type"].startswith("text/event-stream")
        events = _events(g.raw.content)
        assert events == list(hand.events(job.id)) and events[-1]["event"] == "status"
        agree(g("jobs.get_metrics", job_id=job.id), hand.metrics(job.id))
        logs = g("jobs.get_logs", job_id=job.id, tail=200)
        assert logs == hand.logs(job.id, tail=200)
        finished = g("jobs.cancel_job", job_id=job.id)
        assert error_agrees(g, finished, 409, lambda: hand.cancel(job.id)) == "conflict"
        queued = g("jobs.create_job", body=m.JobCreate(train_dataset_id=train.id))
        cancelled = g("jobs.cancel_job", job_id=queued.id)
        assert str(cancelled.status) == "cancelled"
        agree(cancelled, hand.job(queued.id))

        # The model, predict (JSON, a class filter as an array, PNG), downloads, export.
        models = g("models.list_models")
        agree(models, hand.models())
        (model,) = [x for x in models.data if x.job_id == job.id]
        agree(g("models.get_model", model_id=model.id), hand.model(model.id))
        image = sorted((served.shapes / "images").glob("val_*.png"))[0]
        png = g.file(image.read_bytes(), image.name, "image/png")
        form = m.PredictForm(files=[png], score_threshold=0.0, class_ids=[1, 2])
        found = g("models.predict", model_id=model.id, body=form)
        assert isinstance(found, m.PredictPublic), g.raw.content
        agree(found, hand.predict(model.id, [image], score_threshold=0.0, class_ids=[1, 2]))
        assert {d.category_id for d in found.images[0].detections} <= {1, 2}
        png = g.file(image.read_bytes(), image.name, "image/png")
        drawn = g("models.predict_png", model_id=model.id, body=m.PredictForm(files=[png]))
        assert drawn.payload.read() == hand.predict_png(model.id, image)
        assert Image.open(io.BytesIO(g.raw.content)).size == (96, 96)
        text = g.file(b"not an image", "a.png", "image/png")
        refused = g("models.predict", model_id=model.id, body=m.PredictForm(files=[text]))
        code = error_agrees(
            g,
            refused,
            415,
            lambda: hand._call(
                "POST", f"/v1/models/{model.id}/predict", files=[("files", ("a.png", b"x"))]
            ),
        )
        assert code == "unsupported_image"
        weights = g("models.download_weights", model_id=model.id)
        assert (
            weights.payload.read()
            == hand.download(f"/v1/models/{model.id}/weights", tmp_path / "w").read_bytes()
        )
        absent = g("models.download_export", model_id=model.id)  # an error of a file route
        error_agrees(
            g, absent, 404, lambda: hand.download(f"/v1/models/{model.id}/export/onnx", tmp_path)
        )
        exported = g("models.export", model_id=model.id, body=m.ExportRequest())
        assert isinstance(exported, m.ExportPublic), g.raw.content
        assert exported.parity.ok is True and "agree" in exported.parity.summary
        assert done.recipe.loss.gamma == hand.job(job.id)["recipe"]["loss"]["gamma"]  # typed
        onnx = g("models.download_export", model_id=model.id)
        assert onnx.payload.read() == hand.download(exported.download, tmp_path / "o").read_bytes()

    # Without a key: 401, parsed as documented.
    anonymous = Generated(gen, served.url, key=None)
    unauthorized = anonymous("jobs.get_job", job_id=job.id)
    assert isinstance(unauthorized, m.ErrorBody) and anonymous.raw.status_code == 401
    assert str(g("health.ready").status) == "ok"
