"""The quick start's main job, over HTTP: start the service on its embedded defaults (SQLite,
one worker), upload a generated COCO dataset, post a training job, follow it live, print the
COCO metrics table, stop the service."""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from detector.data.shapes import ShapesSpec, make_shapes_splits
from detector.evaluate.coco import CocoMetrics
from service.client import Client
from service.settings import hash_key

WORK = Path(".quickstart")
PREDICTIONS = WORK / "predictions.png"
PREDICTION_TILES = 6


def enlarged(paths: list[Path], *, factor: int = 3) -> list[Path]:
    """Copies of the images ``factor`` times larger, so the labels drawn on them are legible
    (the service resizes every image to the model's input size and answers in its pixels)."""
    out = WORK / "preview"
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        with Image.open(path) as im:
            big = im.resize((im.width * factor, im.height * factor), Image.Resampling.BICUBIC)
        big.save(out / path.name)
        copies.append(out / path.name)
    return copies


def tile_row(images: list[Image.Image], *, gap_px: int = 4) -> Image.Image:
    """The images side by side on white, top-aligned."""
    width = sum(im.width for im in images) + gap_px * (len(images) - 1)
    row = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        row.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap_px
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service at {url} did not become ready in {timeout_s} s")


def main() -> int:
    data = WORK / "data"
    paths = make_shapes_splits(
        data, ShapesSpec(num_images=1, size_px=128, seed=0), splits=[("train", 96), ("val", 32)]
    )
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RETINANET_DATA_DIR": str(WORK / "service"),
        "RETINANET_API_KEY_HASHES": hash_key(api_key),
        "RETINANET_HEARTBEAT_S": "2",
        "RETINANET_POLL_S": "0.5",
        "RETINANET_LOG_LEVEL": "WARNING",
    }
    print(f"starting the service on {url} (data in {WORK / 'service'})", flush=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        wait_ready(url)
        with Client(url, api_key=api_key) as client:
            train = client.upload_dataset(paths["train"], data / "images", name="shapes-train")
            val = client.upload_dataset(paths["val"], data / "images", name="shapes-val")
            print(
                f"datasets: train {train['id']} ({train['num_images']} images, "
                f"{train['class_counts']}), "
                f"val {val['id']} ({val['num_images']} images)"
            )
            job = client.create_job(
                train_dataset_id=train["id"], val_dataset_id=val["id"], recipe="shapes_quickstart"
            )
            print(f"job {job['id']} queued; following its events")
            for event in client.events(job["id"]):
                payload = event["data"]
                if event["event"] == "epoch":
                    m = payload.get("metrics") or {}
                    ap = (m.get("summary") or {}).get("AP50")
                    ap_text = "" if ap is None else f", val AP50 {100 * ap:.1f}"
                    print(
                        f"  epoch {payload['epoch']}: "
                        f"val loss {sum((payload.get('val_losses') or {}).values()):.3f}{ap_text}"
                    )
                elif event["event"] in ("status", "error"):
                    print(f"  {event['event']}: {payload}")
            job = client.wait(job["id"])
            print(
                f"job {job['id']}: {job['status']}" + (f" ({job['error']})" if job["error"] else "")
            )
            metrics = client.metrics(job["id"])
            if metrics["latest"] is None:
                return 1
            print(
                "\nvalidation metrics (GET /v1/jobs/{id}/metrics):\n"
                + CocoMetrics.model_validate(metrics["latest"]).to_table()
            )
            if job["status"] != "succeeded":
                return 1
            model = client.model_of_job(job["id"])
            image = sorted((data / "images").glob("val_*.png"))[0]
            found = client.predict(model["id"], [image])["images"][0]["detections"]
            print(
                f"\nmodel {model['id']}: POST /v1/models/{{id}}/predict on {image.name} "
                f"(per-class best-F1 thresholds): {len(found)} detections"
            )
            for det in found[:5]:
                x, y, w, h = det["bbox"]
                print(
                    f"  {det['category_name']:<8} {det['score']:.2f} "
                    f"at [{x:.0f}, {y:.0f}, {w:.0f}, {h:.0f}]"
                )
            drawn = [
                Image.open(io.BytesIO(client.predict_png(model["id"], path)))
                for path in enlarged(sorted((data / "images").glob("val_*.png"))[:PREDICTION_TILES])
            ]
            PREDICTIONS.parent.mkdir(parents=True, exist_ok=True)
            tile_row(drawn).save(PREDICTIONS)
            print(
                f"predictions on {len(drawn)} validation images "
                f"(POST /v1/models/{{id}}/predict/png) drawn to {PREDICTIONS}"
            )
            return 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


if __name__ == "__main__":
    raise SystemExit(main())
