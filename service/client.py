"""A small Python client for the service: datasets, jobs, live events, metrics."""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class ApiClientError(Exception):
    """A non-2xx answer, with the service's error code and details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class Client:
    """``Client("http://127.0.0.1:8000", api_key="...")``; use as a context manager."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout_s: float = 120.0
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self._checked(self._http.request(method, url, **kwargs))
        if response.status_code == 204:
            return None
        return (
            response.json() if "json" in response.headers.get("content-type", "") else response.text
        )

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        """``response``, unless it is an error: then :class:`ApiClientError` with its body."""
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text}
            raise ApiClientError(
                response.status_code,
                error.get("code", ""),
                error.get("message", ""),
                error.get("details"),
            )
        return response

    # -- datasets ---------------------------------------------------------------------------

    def upload_dataset(
        self, annotations: Path, images: Path, *, name: str | None = None
    ) -> dict[str, Any]:
        """Zip a COCO JSON with the images it names (and only those) and upload it."""
        data = json.loads(Path(annotations).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "dataset.zip"
            with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr("annotations.json", json.dumps(data))
                for image in data.get("images", []):
                    source = Path(images) / image["file_name"]
                    if source.is_file():  # a missing one is for the server's report to name
                        zf.write(source, f"images/{image['file_name']}")
            with archive.open("rb") as f:
                files = {"file": ("dataset.zip", f, "application/zip")}
                return dict(
                    self._call(
                        "POST",
                        "/v1/datasets",
                        files=files,
                        data={"name": name or Path(annotations).stem},
                    )
                )

    def register_dataset(self, *, name: str, annotations: str, images: str) -> dict[str, Any]:
        body = {"name": name, "annotations": annotations, "images": images}
        return dict(self._call("POST", "/v1/datasets/register", json=body))

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self._call("DELETE", f"/v1/datasets/{dataset_id}")

    # -- jobs -------------------------------------------------------------------------------

    def create_job(self, *, idempotency_key: str | None = None, **body: Any) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._call("POST", "/v1/jobs", json=body, headers=headers))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        study_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of jobs; the filters given must all hold."""
        filters = {"status": status, "name": name, "tag": tag, "study_id": study_id}
        params: dict[str, Any] = {"limit": limit, "offset": offset} | {
            k: v for k, v in filters.items() if v is not None
        }
        return dict(self._call("GET", "/v1/jobs", params=params))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def metrics(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/jobs/{job_id}/metrics"))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's attempts: claims, training starts (with their warnings), status changes."""
        return list(self._call("GET", f"/v1/jobs/{job_id}/history")["data"])

    def logs(self, job_id: str, *, tail: int = 200) -> str:
        return str(self._call("GET", f"/v1/jobs/{job_id}/logs", params={"tail": tail}))

    def wait(
        self, job_id: str, *, timeout_s: float = 3600.0, poll_s: float = 1.0
    ) -> dict[str, Any]:
        """Poll until the job is finished; returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def events(self, job_id: str, *, last_event_id: int = 0) -> Iterator[dict[str, Any]]:
        """Server-sent events of a job, live, until it finishes: ``{"id", "event", "data"}``."""
        headers = {"Last-Event-ID": str(last_event_id), "Accept": "text/event-stream"}
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._call("GET", f"/v1/jobs/{job_id}")  # raises with the service's error
            event: dict[str, Any] = {}
            for line in response.iter_lines():
                if not line:
                    if "data" in event:
                        event["data"] = json.loads(event["data"])
                        yield event
                    event = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    event[field] = value.removeprefix(" ")

    # -- studies ----------------------------------------------------------------------------

    def create_study(self, *, idempotency_key: str | None = None, **body: Any) -> dict[str, Any]:
        """``body``: ``base`` (a job's fields), ``grid``, ``seeds``, ``baseline``, ``pruning``..."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._call("POST", "/v1/studies", json=body, headers=headers))

    def study(self, study_id: str) -> dict[str, Any]:
        """The study with its table and verdict."""
        return dict(self._call("GET", f"/v1/studies/{study_id}"))

    def studies(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/studies", params={"limit": limit, "offset": offset}))

    def cancel_study(self, study_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/studies/{study_id}/cancel"))

    def study_plot(self, study_id: str) -> bytes:
        """The study's plot as PNG bytes."""
        return self._checked(self._http.get(f"/v1/studies/{study_id}/plot.png")).content

    def wait_study(
        self, study_id: str, *, timeout_s: float = 36_000.0, poll_s: float = 2.0
    ) -> dict[str, Any]:
        """Poll until every job of the study has ended; returns the study."""
        deadline = time.monotonic() + timeout_s
        while True:
            study = self.study(study_id)
            if study["status"] == "finished":
                return study
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {study_id} still {study['status']} after {timeout_s} s")
            time.sleep(poll_s)

    # -- models -----------------------------------------------------------------------------

    def workers(self, *, stale: bool = False) -> dict[str, Any]:
        """The live workers (all ever seen with ``stale``), each with its devices and job."""
        return dict(self._call("GET", "/v1/workers", params={"stale": stale}))

    def models(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/models", params={"limit": limit, "offset": offset}))

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/models/{model_id}"))

    def model_of_job(self, job_id: str) -> dict[str, Any]:
        """The model a succeeded job produced."""
        offset = 0
        while True:
            page = self.models(limit=500, offset=offset)
            for model in page["data"]:
                if model["job_id"] == job_id:
                    return dict(model)
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                raise ApiClientError(404, "not_found", f"job {job_id!r} has no model")

    def delete_model(self, model_id: str) -> None:
        self._call("DELETE", f"/v1/models/{model_id}")

    def predict(self, model_id: str, images: list[Path], **options: Any) -> dict[str, Any]:
        """Detections per image: ``{"model_id", "images": [{"file", "detections": [...]}]}``.
        ``options``: those of :meth:`predict_form` (score_threshold, class_ids, ...)."""
        files, data = self.predict_form(images, **options)
        return dict(self._call("POST", f"/v1/models/{model_id}/predict", files=files, data=data))

    def predict_png(self, model_id: str, image: Path, **options: Any) -> bytes:
        """One image with its detections drawn, as PNG bytes."""
        files, data = self.predict_form([image], **options)
        url = f"/v1/models/{model_id}/predict/png"
        return self._checked(self._http.post(url, files=files, data=data)).content

    @staticmethod
    def predict_form(
        images: list[Path],
        *,
        score_threshold: float | str | None = None,
        nms_iou: float | None = None,
        max_detections: int | None = None,
        class_ids: list[int] | None = None,
        tile_size: int | None = None,
        tile_overlap: float | None = None,
    ) -> tuple[list[tuple[str, tuple[str, bytes]]], dict[str, Any]]:
        """The multipart parts and form fields of a predict request."""
        fields = {
            "score_threshold": score_threshold,
            "nms_iou": nms_iou,
            "max_detections": max_detections,
            "tile_size": tile_size,
            "tile_overlap": tile_overlap,
        }
        data: dict[str, Any] = {k: str(v) for k, v in fields.items() if v is not None}
        if class_ids is not None:  # an array: the field repeated, one id each
            data["class_ids"] = [str(c) for c in class_ids]
        files = [("files", (Path(p).name, Path(p).read_bytes())) for p in images]
        return files, data

    def export(self, model_id: str, *, fmt: str = "onnx") -> dict[str, Any]:
        """Export and parity-check (may take a minute); returns the report and download path."""
        return dict(self._call("POST", f"/v1/models/{model_id}/export", json={"format": fmt}))

    def download(self, path: str, out: Path) -> Path:
        """A file the API serves (``/v1/models/{id}/weights``, an export's ``download``)."""
        with self._http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                self._call("GET", path)  # raises with the service's error
            with Path(out).open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return Path(out)
