"""Inference over HTTP against the bare model, and PyTorch eager against onnxruntime.

One run does everything side by side:

1. Generates shapes at BCCD's size (640x480), starts ``retinanet serve`` with one worker on a
   fresh data directory, uploads the data and trains a ``bccd_r18`` job for a few iterations
   (the model's weights barely matter for speed; its shapes and sizes do), then starts a second
   API on the same store with batching off (``RETINANET_PREDICT_MAX_BATCH=1``) and a third
   serving through onnxruntime (``RETINANET_PREDICT_RUNTIME=onnxruntime``; the first two are
   pinned to ``torch``).
2. Times, in interleaved rounds: the bare model (``Predictor.predict`` on a decoded image, in
   this process) one image per call, and 8 images per call; the service over HTTP (multipart
   upload, decoding, queue, JSON) at concurrency 1 and 8, with batching on and off, and the
   onnxruntime service at concurrency 1 and 8 (batching on), checked first to answer as the
   PyTorch service does.
   Latency p50/p99 over all requests of a case; throughput = images / wall time of a round,
   median over rounds.
3. Exports the model to ONNX through the API (with its parity check) and times the dense
   network alone on the same canvas batches: PyTorch eager vs onnxruntime, batch 1 and 8.

    .venv/bin/python bench/inference.py [--rounds 5] [--requests 16] [--image PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the package from the repo
    sys.path.insert(0, str(REPO))

from detector import PredictOptions, Predictor, read_rgb  # noqa: E402
from detector.data.shapes import ShapesSpec, make_shapes_splits  # noqa: E402
from detector.export import OnnxRunner, canvas_batch  # noqa: E402
from service.client import Client  # noqa: E402
from service.settings import hash_key  # noqa: E402

BCCD_IMAGE = REPO.parent / "shared" / "datasets" / "bccd" / "images"
KEY = "bench-key"


@dataclass
class Case:
    name: str
    concurrency: int
    images_per_call: int
    latencies_ms: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        values = sorted(self.latencies_ms)
        return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(data_dir: Path, *, workers: int, env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    full_env = {
        **os.environ,
        "RETINANET_DATA_DIR": str(data_dir),
        "RETINANET_API_KEY_HASHES": hash_key(KEY),
        **env,
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
             "--workers", str(workers), "--log-level", "warning"],
            env=full_env, stdout=out, stderr=out,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the API did not start; see {log}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=120)


def train_model(client: Client, root: Path) -> str:
    paths = make_shapes_splits(
        root, ShapesSpec(num_images=1, size_px=480, seed=0), splits=[("train", 16), ("val", 4)]
    )
    train = client.upload_dataset(paths["train"], root / "images", name="bench-train")
    val = client.upload_dataset(paths["val"], root / "images", name="bench-val")
    job = client.create_job(
        train_dataset_id=train["id"],
        val_dataset_id=val["id"],
        recipe="bccd_r18",
        recipe_overrides={
            "solver": {"epochs": None, "max_iters": 4, "steps": [], "warmup_iters": 1},
            "data": {"num_workers": 0},
        },
    )
    done = client.wait(job["id"], timeout_s=1800)
    if done["status"] != "succeeded":
        raise RuntimeError(f"training failed: {done['error']}\n{client.logs(job['id'])}")
    return str(client.model_of_job(job["id"])["id"])


def http_round(url: str, model_id: str, image: bytes, case: Case, requests: int) -> None:
    """``requests`` requests per thread, ``case.concurrency`` threads."""

    def work() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=600) as http:
            for _ in range(requests):
                t = time.perf_counter()
                r = http.post(
                    f"/v1/models/{model_id}/predict",
                    files=[("files", ("image.jpg", image))],
                    data={"score_threshold": "0.05"},
                )
                r.raise_for_status()
                case.latencies_ms.append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=work) for _ in range(case.concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    case.throughputs.append(case.concurrency * requests / (time.perf_counter() - start))


def bare_round(predictor: Predictor, image: torch.Tensor, case: Case, requests: int) -> None:
    options = PredictOptions(score_threshold=0.05)
    batch = [image] * case.images_per_call
    calls = max(1, requests // case.images_per_call)
    start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        predictor.predict(batch, options)
        case.latencies_ms.append((time.perf_counter() - t) * 1000)
    case.throughputs.append(calls * case.images_per_call / (time.perf_counter() - start))


def time_fn(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=16, help="requests per thread per round")
    p.add_argument("--image", type=Path, default=None, help="default: a BCCD image, if present")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the APIs and the bare model run inference (same for both; the ONNX "
        "comparison runs on the CPU); default: cuda when present",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    device_env = {"RETINANET_PREDICT_DEVICE": args.device}
    image_path = args.image or next(iter(sorted(BCCD_IMAGE.glob("*.jpg"))), None)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if image_path is None:  # no BCCD here: a generated 640x480 image instead
            image_path = tmp / "image.png"
            from torchvision.io import write_png

            write_png(torch.randint(0, 255, (3, 480, 640), dtype=torch.uint8), str(image_path))
        data_dir = tmp / "data"
        torch_env = {**device_env, "RETINANET_PREDICT_RUNTIME": "torch"}
        with serve(data_dir, workers=1, env=torch_env, log=tmp / "api.log") as url:
            with Client(url, api_key=KEY, timeout_s=1800) as client:
                model_id = train_model(client, tmp / "shapes")
                export = client.export(model_id)
                onnx_file = client.download(export["download"], tmp / "model.onnx")
            weights = client_weights(url, model_id, tmp)
            ort_env = {**device_env, "RETINANET_PREDICT_RUNTIME": "onnxruntime"}
            with (
                serve(
                    data_dir,
                    workers=0,
                    env={**torch_env, "RETINANET_PREDICT_MAX_BATCH": "1"},
                    log=tmp / "api1.log",
                ) as url_unbatched,
                serve(data_dir, workers=0, env=ort_env, log=tmp / "api_ort.log") as url_ort,
            ):
                urls = {"torch": url, "unbatched": url_unbatched, "onnxruntime": url_ort}
                cases = measure(urls, model_id, weights, image_path, args)
        dense = dense_rows(weights, onnx_file, image_path)
        # Read now: a generated image goes with the temporary folder.
        width_height = "x".join(map(str, read_rgb(image_path).shape[1:][::-1]))
        image = f"{image_path.name} ({width_height})"
    print_report(cases, dense, image, args, export["parity"]["summary"])
    return 0


def client_weights(url: str, model_id: str, tmp: Path) -> Path:
    with Client(url, api_key=KEY) as client:
        return client.download(f"/v1/models/{model_id}/weights", tmp / "model.safetensors")


def measure(
    urls: dict[str, str], model_id: str, weights: Path, image_path: Path,
    args: argparse.Namespace,
) -> list[Case]:  # fmt: skip
    image_bytes = image_path.read_bytes()
    predictor = Predictor.load(weights, device=args.device)
    image = read_rgb(image_path)
    url, url_unbatched, url_ort = urls["torch"], urls["unbatched"], urls["onnxruntime"]
    cases = {
        "bare1": Case("bare model, 1 image per call", 1, 1),
        "http1": Case("HTTP, batching on", 1, 1),
        "ort1": Case("HTTP onnxruntime, batching on", 1, 1),
        "bare8": Case("bare model, 8 images per call", 1, 8),
        "http8_off": Case("HTTP, batching off", 8, 1),
        "http8_on": Case("HTTP, batching on", 8, 1),
        "ort8": Case("HTTP onnxruntime, batching on", 8, 1),
    }
    # Warm-up: load the model in the APIs (the onnxruntime one exports its graph) and here.
    for u in urls.values():
        http_round(u, model_id, image_bytes, Case("warmup", 1, 1), 2)
    bare_round(predictor, image, Case("warmup", 1, 1), 2)
    check_same_answers(url, url_ort, model_id, image_bytes)
    for r in range(args.rounds):
        bare_round(predictor, image, cases["bare1"], args.requests)
        http_round(url, model_id, image_bytes, cases["http1"], args.requests)
        http_round(url_ort, model_id, image_bytes, cases["ort1"], args.requests)
        bare_round(predictor, image, cases["bare8"], args.requests * 8)
        http_round(url_unbatched, model_id, image_bytes, cases["http8_off"], args.requests)
        http_round(url, model_id, image_bytes, cases["http8_on"], args.requests)
        http_round(url_ort, model_id, image_bytes, cases["ort8"], args.requests)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    return list(cases.values())


def check_same_answers(url: str, url_ort: str, model_id: str, image: bytes) -> None:
    """Both services' detections of the image: same classes, boxes within 0.01 px, scores
    within 1e-4 (else the benchmark stops: a fast wrong answer is no result)."""
    answers = []
    for u in (url, url_ort):
        with httpx.Client(base_url=u, headers={"X-API-Key": KEY}, timeout=600) as http:
            r = http.post(
                f"/v1/models/{model_id}/predict",
                files=[("files", ("image.jpg", image))],
                data={"score_threshold": "0.05"},
            )
            r.raise_for_status()
            answers.append(r.json()["images"][0]["detections"])
    a, b = answers
    same = [x["category_id"] for x in a] == [y["category_id"] for y in b] and all(
        abs(x["score"] - y["score"]) <= 1e-4
        and max(abs(p - q) for p, q in zip(x["bbox"], y["bbox"], strict=True)) <= 0.01
        for x, y in zip(a, b, strict=True)
    )
    print(f"check: torch and onnxruntime services agree on {len(a)} detections: {same}")
    if not same:
        raise SystemExit("the onnxruntime service answers differently from the torch service")


def dense_rows(weights: Path, onnx_file: Path, image_path: Path) -> list[tuple[int, float, float]]:
    """(batch, eager ms, onnxruntime ms) for the dense network on the export's canvas."""
    predictor = Predictor.load(weights, device="cpu")
    runner = OnnxRunner(onnx_file, threads=torch.get_num_threads())
    size = tuple(runner.metadata["input_size"])
    image = read_rgb(image_path)
    rows = []
    for n in (1, 8):
        batch, _ = canvas_batch(predictor, [image] * n, (size[0], size[1]))

        def eager_forward(b: torch.Tensor = batch) -> object:
            with torch.no_grad():
                return predictor.dense(b)

        def ort_forward(b: torch.Tensor = batch) -> object:
            return runner(b)

        eager, ort = time_fn(eager_forward, 10), time_fn(ort_forward, 10)
        rows.append((n, eager, ort))
    return rows


def print_report(
    cases: list[Case], dense: list[tuple[int, float, float]], image: str,
    args: argparse.Namespace, parity: str,
) -> None:  # fmt: skip
    by = {c.name + str(c.concurrency): c for c in cases}
    bare1, http1 = by["bare model, 1 image per call1"], by["HTTP, batching on1"]
    off8, on8 = by["HTTP, batching off8"], by["HTTP, batching on8"]
    print(f"- Date: {time.strftime('%Y-%m-%d')}; {device_line()}; inference on {args.device}")
    print(f"- Image: {image}; {args.rounds} rounds x {args.requests} requests per client thread")
    print(f"- ONNX export: {parity}\n")
    print("| case | concurrency | images/call | p50 ms | p99 ms | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in cases:
        print(
            f"| {c.name} | {c.concurrency} | {c.images_per_call} | {c.p(0.5):.1f} | "
            f"{c.p(0.99):.1f} | {statistics.median(c.throughputs):.2f} |"
        )
    overhead = http1.p(0.5) / bare1.p(0.5) - 1
    gain = statistics.median(on8.throughputs) / statistics.median(off8.throughputs)
    print(f"\nService overhead at concurrency 1 (p50 HTTP / p50 bare - 1): {overhead:+.1%}")
    print(f"Batching at concurrency 8 (images/s on / off): {gain:.2f}x")
    print("\n| concurrency | torch images/s | onnxruntime images/s | ratio (ort/torch) | "
          "torch p50 / p99 ms | onnxruntime p50 / p99 ms |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for t, o in (
        (http1, by["HTTP onnxruntime, batching on1"]),
        (on8, by["HTTP onnxruntime, batching on8"]),
    ):
        rt, ro = statistics.median(t.throughputs), statistics.median(o.throughputs)
        print(f"| {t.concurrency} | {rt:.2f} | {ro:.2f} | {ro / rt:.2f}x | "
              f"{t.p(0.5):.1f} / {t.p(0.99):.1f} | {o.p(0.5):.1f} / {o.p(0.99):.1f} |")  # fmt: skip
    print("\n| dense network | batch | PyTorch eager ms | onnxruntime ms | ratio (eager/ort) |")
    print("|---|---:|---:|---:|---:|")
    for n, eager, ort in dense:
        print(f"| canvas | {n} | {eager:.1f} | {ort:.1f} | {eager / ort:.2f}x |")


def device_line() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name()}, " if torch.cuda.is_available() else ""
    return (
        f"{gpu}CPU {cpu} ({os.cpu_count()} logical), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    raise SystemExit(main())
