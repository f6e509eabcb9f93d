"""Where the time of one predict request goes, with the dense network in PyTorch and onnxruntime.

In this process, on one image (default: a BCCD test image, 640x480, seen at 320x427 by the
``bccd_r18`` recipe), the steps the service runs for ``POST /v1/models/{id}/predict``:
decode (``service.images.decode_upload`` on the uploaded bytes), preprocess (the evaluation
resize and padding), network (PyTorch or onnxruntime), postprocess (anchors, decoding,
thresholds, top-k, NMS, boxes back to original pixels: the rest of ``Predictor.predict``) and
JSON (the response model serialised). Score threshold 0: the detection cap (100) is reached,
the most postprocessing and JSON a request can cost. The model is ``bccd_r18`` trained for one
iteration on generated shapes (speed depends on the network and the sizes, not the weights).
Median [min-max] of ``--repeats`` interleaved rounds; HTTP, multipart and queueing are what
``bench/inference.py`` adds on top.

    .venv/bin/python bench/request_breakdown.py [--repeats 20] [--image PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision import tv_tensors

from detector import PredictOptions, Predictor, onnxruntime_predictor, sha256_file
from detector.data.shapes import ShapesSpec, make_shapes_splits
from detector.engine.trainer import fit
from detector.model.postprocess import pad_batch
from detector.recipe import load_recipe
from service.images import decode_upload
from service.schemas import ImageDetections, PredictPublic

ROOT = Path(__file__).resolve().parents[1]
BCCD_IMAGES = ROOT.parent / "shared" / "datasets" / "bccd" / "images"


def _model(tmp: Path) -> Path:
    paths = make_shapes_splits(
        tmp / "shapes", ShapesSpec(num_images=1, size_px=480, seed=0), splits=[("train", 8)]
    )
    cfg = load_recipe(
        ROOT / "configs" / "bccd_r18.yaml",
        [
            f"data.train.annotations={paths['train']}",
            f"data.train.images={tmp / 'shapes' / 'images'}",
            "data.num_workers=0",
            "solver.epochs=null",
            "solver.max_iters=1",
            "solver.steps=[]",
            "solver.warmup_iters=1",
        ],
    )
    fit(cfg, tmp / "run")
    return tmp / "run" / "checkpoints" / "last.pt"


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _round(
    predictor: Predictor, data: bytes, batch: torch.Tensor, options: PredictOptions
) -> dict[str, float]:
    """Milliseconds of each step of one request (predict = preprocess + network + post)."""
    image = decode_upload("a.jpg", data, max_pixels=40_000_000)
    dense = predictor.dense
    dets = predictor.predict([image], options)[0]

    def preprocess() -> object:
        pixels = predictor.transforms(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        return pad_batch([pixels], size_divisible=dense.size_divisible, pad_value=dense.pad_value)

    def network() -> object:
        with torch.no_grad():
            return predictor.network(batch)

    def json_body() -> str:
        shown = ImageDetections(file="a.jpg", width=640, height=480, detections=dets)
        return PredictPublic(model_id="m", images=[shown]).model_dump_json()

    return {
        "decode": _ms(lambda: decode_upload("a.jpg", data, max_pixels=40_000_000)),
        "preprocess": _ms(preprocess),
        "network": _ms(network),
        "predict": _ms(lambda: predictor.predict([image], options)),
        "JSON": _ms(json_body),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--image", type=Path, default=next(iter(sorted(BCCD_IMAGES.glob("*.jpg")))))
    args = p.parse_args()
    data = args.image.read_bytes()
    options = PredictOptions(score_threshold=0.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = _model(tmp)
        torch_predictor = Predictor.load(weights, device="cpu")
        runtimes = {
            "torch": torch_predictor,
            "onnxruntime": onnxruntime_predictor(
                torch_predictor, cache_dir=tmp / "onnx", weights_sha256=sha256_file(weights)
            ),
        }
        image = decode_upload(args.image.name, data, max_pixels=40_000_000)
        pixels = torch_predictor.transforms(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        dense = torch_predictor.dense
        batch, _ = pad_batch(
            [pixels], size_divisible=dense.size_divisible, pad_value=dense.pad_value
        )
        steps: dict[str, dict[str, list[float]]] = {r: {} for r in runtimes}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, predictor in runtimes.items():
                for key, value in _round(predictor, data, batch, options).items():
                    steps[name].setdefault(key, []).append(value)
        found = len(torch_predictor.predict([image], options)[0])
        print(f"image {args.image.name} ({image.shape[-1]}x{image.shape[-2]}), model input "
              f"{tuple(batch.shape[-2:])}, {found} detections; torch "
              f"{torch.get_num_threads()} threads; {args.repeats} rounds")  # fmt: skip
    print("\n| step | torch ms | onnxruntime ms |")
    print("|---|---:|---:|")
    med = {r: {k: statistics.median(v[1:]) for k, v in s.items()} for r, s in steps.items()}
    for key in ("decode", "preprocess", "network", "postprocess", "JSON", "total"):
        cells = []
        for r in runtimes:
            m = med[r]
            post = m["predict"] - m["preprocess"] - m["network"]
            total = m["decode"] + m["predict"] + m["JSON"]
            cells.append({"postprocess": post, "total": total}.get(key, m.get(key, 0.0)))
        print(f"| {key} | {cells[0]:.1f} | {cells[1]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
