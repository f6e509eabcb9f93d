"""The dense network under onnxruntime, for serving on the CPU.

Only :meth:`~detector.model.postprocess.DenseRetinaNet.network` (normalise, backbone, FPN,
head) runs in onnxruntime; anchors, box decoding, thresholds, top-k, NMS, tiling and batching
stay in :class:`~detector.predict.Predictor`, shared with the PyTorch path, so every per-request
option means exactly what it means there. Unlike ``detector/export.py``'s published graph
(a fixed canvas, anchors inside), this graph has a dynamic batch, height and width: without
the anchor grid the shapes stay symbolic, and each batch runs at the very padded size
PyTorch would use (images padded to the size divisor, as :func:`pad_batch` does).

The graph is exported once per weights and cached in a file named by the weights' SHA-256 and
the size range it takes; every load checks it against PyTorch (:func:`check_network`) before
it serves.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from detector.export import BOX_ATOL_PX, SCORE_ATOL
from detector.model.postprocess import DenseRetinaNet
from detector.predict import Predictor

FORMAT = "v1"
"""Part of the cache key: bump when the graph's inputs or outputs change."""
OPSET = 17


class OnnxNetworkError(RuntimeError):
    """The exported network disagrees with PyTorch (or could not be exported)."""


class _Network(nn.Module):
    """``DenseRetinaNet.network`` as a module, for the exporter."""

    def __init__(self, dense: DenseRetinaNet) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.dense.network(images)


def cache_path(folder: Path, weights_sha256: str) -> Path:
    """Where the graph of these weights is kept: its inputs are any size, so the weights'
    checksum and the graph's format name it."""
    return folder / f"dense-{weights_sha256[:32]}-anysize-{FORMAT}.onnx"


def export_network(predictor: Predictor, out: Path) -> Path:
    """Export the dense network with a dynamic batch, height and width to ``out`` (atomic).

    TorchScript's exporter, not the dynamo one ``export.py`` uses: with symbolic heights and
    widths the dynamo exporter took 205 s for the shapes recipe's ResNet-18 where this one
    took 18 s (a loaded 2-core CPU; the same graph, the same outputs to 2e-7).
    """
    div = predictor.dense.size_divisible
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")  # removed at start if cut off
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter
            torch.onnx.export(
                _Network(predictor.dense).eval(),
                (torch.rand(2, 3, 10 * div, 14 * div),),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["deltas", "scores"],
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
            )
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


class OnnxNetwork:
    """An exported dense network under onnxruntime's CPU provider; a :data:`DenseNetwork`.

    ``threads``: onnxruntime's intra-op threads (None: as many as PyTorch uses,
    ``torch.get_num_threads()``, so both runtimes are given the same cores); the inter-op
    pool is not used (one sequential graph).
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.path = path
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """float[N, 3, H, W] -> (deltas float[N, A, 4], scores float[N, A, K]), on the CPU."""
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        deltas, scores = self.session.run(None, {"images": x})
        return torch.from_numpy(deltas), torch.from_numpy(scores)


@dataclass(frozen=True)
class NetworkParity:
    max_box_diff_px: float
    max_score_diff: float

    @property
    def ok(self) -> bool:
        return self.max_box_diff_px <= BOX_ATOL_PX and self.max_score_diff <= SCORE_ATOL


def check_network(predictor: Predictor, network: OnnxNetwork) -> NetworkParity:
    """Both runtimes on the same inputs (two batches of seeded noise, landscape and portrait):
    decoded boxes within ``BOX_ATOL_PX``, scores within ``SCORE_ATOL``, or
    :class:`OnnxNetworkError`."""
    dense = predictor.dense
    div = dense.size_divisible
    gen = torch.Generator().manual_seed(0)
    box_diff = score_diff = 0.0
    for h, w in ((10 * div, 14 * div), (6 * div, 4 * div)):
        batch = torch.rand(2, 3, h, w, generator=gen)
        with torch.no_grad():
            t_deltas, t_scores = dense.network(batch)
        o_deltas, o_scores = network(batch)
        boxes = dense.decode(torch.cat([t_deltas, o_deltas]), h, w)
        box_diff = max(box_diff, float((boxes[:2] - boxes[2:]).abs().max()))
        score_diff = max(score_diff, float((t_scores - o_scores).abs().max()))
    parity = NetworkParity(max_box_diff_px=box_diff, max_score_diff=score_diff)
    if not parity.ok:
        raise OnnxNetworkError(
            f"onnxruntime's dense network ({network.path.name}) disagrees with PyTorch: max box "
            f"diff {box_diff:.2g} px (tolerance {BOX_ATOL_PX}), max score diff "
            f"{score_diff:.2g} (tolerance {SCORE_ATOL})"
        )
    return parity


def onnxruntime_predictor(
    predictor: Predictor, *, cache_dir: Path, weights_sha256: str, threads: int | None = None
) -> Predictor:
    """``predictor`` with its dense network in onnxruntime: exported into ``cache_dir`` the
    first time these weights are seen, checked against PyTorch at every load.

    Raises:
        ValueError: ``predictor`` is not on the CPU (onnxruntime runs here on the CPU).
        OnnxNetworkError: the exported graph disagrees with PyTorch.
    """
    if predictor.device.type != "cpu":
        raise ValueError(f"onnxruntime serves on the CPU; the model is on {predictor.device}")
    path = cache_path(cache_dir, weights_sha256)
    if not path.is_file():
        export_network(predictor, path)
    network = OnnxNetwork(path, threads=threads)
    check_network(predictor, network)
    return predictor.with_network(network)
