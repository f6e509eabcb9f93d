"""ONNX export of a trained model, published only when onnxruntime agrees with PyTorch.

The graph is :class:`~detector.model.postprocess.DenseRetinaNet`: float[N, 3, H, W] RGB in
[0, 1] (N dynamic; H, W fixed at export, padded with the mean colour) -> ``boxes``
float[N, A, 4] xyxy in input pixels and ``scores`` float[N, A, K]. Thresholding, top-k and NMS
stay outside the graph, so every runtime applies the same per-request settings with
:func:`~detector.model.postprocess.select_detections`; the ONNX metadata carries what a
consumer needs for that (classes, anchors per level, mean colour, thresholds).

H and W are fixed because the exporter's symbolic shapes do not survive the anchor grid and the
strided FPN levels (onnxruntime rejects other sizes); a square canvas of the recipe's longest
side holds every image the evaluation transform produces, in either orientation.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, computed_field
from torch import Tensor
from torchvision import tv_tensors

from detector.model.postprocess import Detections, SelectOptions, pad_batch, select_detections
from detector.predict import Predictor

BOX_ATOL_PX = 0.5
"""Largest box-coordinate difference (input pixels) tolerated between the runtimes."""
SCORE_ATOL = 1e-3
MAX_SIDE = 4096
"""Largest input side an export accepts (pixels)."""
"""Largest score difference tolerated between the runtimes."""


class ExportMismatchError(ValueError):
    """onnxruntime's detections differ from PyTorch's beyond the tolerances."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.summary)
        self.report = report


class ParityReport(BaseModel):
    """Detections of both runtimes on the same inputs, compared."""

    model_config = ConfigDict(frozen=True)

    images: int
    torch_detections: int
    onnx_detections: int
    matched: int
    borderline: int = 0
    """Unmatched detections whose score is within ``score_atol`` of the score threshold or
    of the lowest score the detection cap kept: a difference far below the tolerance decides
    whether such a detection is kept, so it does not count against parity."""
    max_box_diff_px: float
    max_score_diff: float
    box_atol_px: float = BOX_ATOL_PX
    score_atol: float = SCORE_ATOL

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """Every detection matched within the tolerances (borderline ones aside)."""
        unmatched = self.torch_detections + self.onnx_detections - 2 * self.matched
        return (
            unmatched == self.borderline
            and self.max_box_diff_px <= self.box_atol_px
            and self.max_score_diff <= self.score_atol
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> str:
        """The verdict in one sentence."""
        verdict = "agree" if self.ok else "DISAGREE"
        borderline = f" (+{self.borderline} at the threshold or cap)" if self.borderline else ""
        return (
            f"onnxruntime and PyTorch {verdict} on {self.images} images: "
            f"{self.matched} of {self.torch_detections} PyTorch / {self.onnx_detections} ONNX "
            f"detections matched{borderline}; max box diff {self.max_box_diff_px:.2g} px "
            f"(tolerance {self.box_atol_px}), max score diff {self.max_score_diff:.2g} "
            f"(tolerance {self.score_atol})"
        )


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    input_size: tuple[int, int]
    report: ParityReport


def default_input_size(predictor: Predictor) -> tuple[int, int]:
    """A square canvas of the recipe's longest side, rounded up to the size divisor."""
    div = predictor.dense.size_divisible
    side = -(-predictor.card.recipe.data.max_size // div) * div
    return side, side


def export_onnx(
    predictor: Predictor,
    out: Path,
    *,
    sample_images: Sequence[Tensor],
    input_size: tuple[int, int] | None = None,
) -> OnnxExport:
    """Export to ``out`` and check it on ``sample_images`` (uint8[3, H, W]).

    Raises :class:`ExportMismatchError` (and leaves no file at ``out``) when the runtimes
    disagree.
    """
    if not sample_images:
        raise ValueError("the parity check needs at least one sample image")
    if predictor.device.type != "cpu":
        raise ValueError("export from a CPU predictor: Predictor.load(path, device='cpu')")
    size = input_size or default_input_size(predictor)
    div = predictor.dense.size_divisible
    if any(side % div or not div <= side <= MAX_SIDE for side in size):
        raise ValueError(f"input size {size}: each side a multiple of {div}, at most {MAX_SIDE}")
    dense = predictor.dense
    example = torch.rand(2, 3, *size)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own, so concurrent exports of one model never write the same file.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter
            program = torch.onnx.export(
                dense,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["boxes", "scores"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=256)}},
                verbose=False,
            )
        assert program is not None
        program.save(str(tmp))
        _add_metadata(tmp, predictor, size)
        report = check_parity(predictor, tmp, sample_images)
        if not report.ok:
            raise ExportMismatchError(report)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return OnnxExport(path=out, input_size=size, report=report)


def canvas_batch(
    predictor: Predictor, images: Sequence[Tensor], size: tuple[int, int]
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Images resized as in evaluation, padded onto a fixed canvas: float[N, 3, *size]."""
    resized = [predictor.transforms(tv_tensors.Image(im)).as_subclass(Tensor) for im in images]
    for im in resized:
        if im.shape[-2] > size[0] or im.shape[-1] > size[1]:
            raise ValueError(f"image resized to {tuple(im.shape[-2:])} exceeds the canvas {size}")
    batch, sizes = pad_batch(
        resized, size_divisible=predictor.dense.size_divisible, pad_value=predictor.dense.pad_value
    )
    canvas = torch.tensor(predictor.dense.pad_value).view(1, 3, 1, 1).expand(len(images), 3, *size)
    canvas = canvas.clone()
    canvas[:, :, : batch.shape[-2], : batch.shape[-1]] = batch
    return canvas, sizes


class OnnxRunner:
    """The exported graph under onnxruntime (CPU), with the metadata it was saved with."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k: json.loads(v) for k, v in meta.items()}

    def __call__(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        boxes, scores = self.session.run(None, {"images": batch.numpy().astype(np.float32)})
        return torch.from_numpy(boxes), torch.from_numpy(scores)


def check_parity(predictor: Predictor, onnx_path: Path, images: Sequence[Tensor]) -> ParityReport:
    """Both runtimes on the same canvases and selection, then matched detection by detection."""
    runner = OnnxRunner(onnx_path)
    size = tuple(runner.metadata["input_size"])
    batch, sizes = canvas_batch(predictor, images, (size[0], size[1]))
    with torch.no_grad():
        t_boxes, t_scores = predictor.dense(batch)
    o_boxes, o_scores = runner(batch)
    per_level = predictor.dense.anchors_per_level(size[0], size[1])
    options = _model_select_options(predictor)
    counts = Counter[str]()
    box_diff = score_diff = 0.0
    for i, hw in enumerate(sizes):
        a = select_detections(
            t_boxes[i], t_scores[i], anchors_per_level=per_level, image_size=hw, options=options
        )
        b = select_detections(
            o_boxes[i], o_scores[i], anchors_per_level=per_level, image_size=hw, options=options
        )
        found = compare_detections(a, b, options=options)
        counts.update(
            torch=len(a.scores),
            onnx=len(b.scores),
            matched=found.matched,
            borderline=found.borderline,
        )
        box_diff, score_diff = max(box_diff, found.box_diff), max(score_diff, found.score_diff)
    return ParityReport(
        images=len(images),
        torch_detections=counts["torch"],
        onnx_detections=counts["onnx"],
        matched=counts["matched"],
        borderline=counts["borderline"],
        max_box_diff_px=box_diff,
        max_score_diff=score_diff,
    )


def _model_select_options(predictor: Predictor) -> SelectOptions:
    m = predictor.card.recipe.model
    return SelectOptions(
        score_threshold=m.score_thresh,
        topk_candidates=m.topk_candidates,
        nms_iou=m.nms_thresh,
        max_detections=m.detections_per_img,
    )


@dataclass(frozen=True)
class Comparison:
    matched: int
    """Pairs of the same class (each detection of ``a`` with the nearest unused box of ``b``)."""
    borderline: int
    """Unmatched detections (of either side) at the threshold or the cap's cut."""
    box_diff: float
    """Worst coordinate difference over the pairs (pixels)."""
    score_diff: float


def compare_detections(a: Detections, b: Detections, *, options: SelectOptions) -> Comparison:
    """Pairs the detections of two runtimes on one image, and counts the unmatched ones that
    sit at the edge of what ``options`` keeps (see ``ParityReport.borderline``)."""
    used = torch.zeros(len(b.scores), dtype=torch.bool)
    unmatched_a: list[float] = []
    matched, box_diff, score_diff = 0, 0.0, 0.0
    for box, score, label in zip(a.boxes, a.scores, a.labels, strict=True):
        candidates = (b.labels == label) & ~used
        if not candidates.any():
            unmatched_a.append(float(score))
            continue
        dist = (b.boxes - box).abs().amax(dim=1).masked_fill(~candidates, float("inf"))
        j = int(dist.argmin())
        used[j] = True
        matched += 1
        box_diff = max(box_diff, float(dist[j]))
        score_diff = max(score_diff, float((b.scores[j] - score).abs()))
    unmatched_b = [float(s) for s in b.scores[~used]]
    borderline = sum(_at_the_edge(s, a, options) for s in unmatched_a)
    borderline += sum(_at_the_edge(s, b, options) for s in unmatched_b)
    return Comparison(
        matched=matched, borderline=borderline, box_diff=box_diff, score_diff=score_diff
    )


def _at_the_edge(score: float, kept: Detections, options: SelectOptions) -> bool:
    """Whether ``score`` is within the tolerance of the threshold, or of the lowest score
    kept when the detection cap was reached (a tie at the cut)."""
    if abs(score - options.score_threshold) <= SCORE_ATOL:
        return True
    capped = len(kept.scores) >= options.max_detections
    return capped and score <= float(kept.scores.min()) + SCORE_ATOL


def _add_metadata(path: Path, predictor: Predictor, size: tuple[int, int]) -> None:
    import onnx

    model = onnx.load(str(path))
    card = predictor.card
    meta = {
        "input_size": list(size),
        "pad_value": list(predictor.dense.pad_value),
        "anchors_per_level": predictor.dense.anchors_per_level(*size),
        "classes": [c.model_dump() for c in card.classes],
        "score_thresholds": {str(k): v for k, v in card.score_thresholds.items()},
        "eval_min_size": card.recipe.data.eval_min_size,
        "max_size": card.recipe.data.max_size,
        "score_thresh": card.recipe.model.score_thresh,
        "nms_iou": card.recipe.model.nms_thresh,
        "topk_candidates": card.recipe.model.topk_candidates,
        "detections_per_img": card.recipe.model.detections_per_img,
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
