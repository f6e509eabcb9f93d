"""The ``retinanet`` command line: its subcommands and ``main`` (``detector.cli_main``).

Each subcommand is a small function that parses nothing itself: argparse does, and the
function calls into the package. Errors a user can fix (a bad path, a bad recipe, an invalid
dataset) print one clear message and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from detector.artifact import save_model_file
from detector.data.shapes import SHAPES, ShapesSpec, make_shapes_splits
from detector.data.validate import DatasetError, load_coco, validate_coco
from detector.draw import draw_detections
from detector.engine.callbacks import JsonlEvents, ProgressBar, StopOnSignal
from detector.engine.checkpoint import checkpoint_dir, last_checkpoint
from detector.engine.tracking_tensorboard import tensorboard_dir
from detector.engine.trainer import AnchorFitWarning, NonFiniteLossError, fit
from detector.export import ExportMismatchError, export_onnx
from detector.final import finalize
from detector.model.anchor_fit import anchor_fit
from detector.model.weights import WeightsError
from detector.predict import PredictOptions, Predictor, read_rgb
from detector.recipe import RecipeError, load_recipe
from detector.weights_commands import add_weights_commands

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A problem the user can fix; printed as one message."""


AddCommands = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def main(argv: Sequence[str] | None = None, *, extra: AddCommands | None = None) -> int:
    """Run the command line; ``extra`` adds subcommands (the service adds serve and worker)."""
    parser = build_parser(extra=extra)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (
        CliError,
        RecipeError,
        DatasetError,
        WeightsError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"retinanet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, RecipeError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser(*, extra: AddCommands | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinanet", description="Train and evaluate RetinaNet (focal loss) on COCO datasets."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a COCO dataset and report every problem")
    p.add_argument("annotations", type=Path, help="COCO annotations JSON")
    p.add_argument("image_dir", type=Path, help="folder the file_names are relative to")
    p.add_argument("--strict", action="store_true", help="treat every warning as an error")
    p.add_argument(
        "--decode", action="store_true", help="decode every image (slow; finds truncated files)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--max-items", type=int, default=10, help="items listed per problem kind in the table"
    )
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("make-shapes", help="write a synthetic COCO dataset of shapes")
    p.add_argument("out", type=Path, help="output folder (annotations/ and images/ inside)")
    p.add_argument("--images", type=int, default=64, help="training images")
    p.add_argument(
        "--val-images", type=int, default=None, help="validation images (default: images / 4)"
    )
    p.add_argument("--test-images", type=int, default=0, help="test images")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--classes",
        default="circle,square,triangle",
        help=f"comma-separated, from {','.join(SHAPES)}",
    )
    p.add_argument("--weights", default=None, help="comma-separated class frequencies (imbalance)")
    p.set_defaults(handler=cmd_make_shapes)

    p = sub.add_parser("train", help="train a recipe on COCO datasets")
    p.add_argument("recipe", type=Path, help="YAML recipe (see configs/)")
    _add_data_args(p, "--data-train", required=True, help="training annotations and image folder")
    _add_data_args(
        p, "--data-val", help="validation set (metrics, best checkpoint, early stopping)"
    )
    _add_data_args(
        p, "--data-test", help="test set, scored once at the end with the best checkpoint"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoints, events, metrics)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue exactly from OUT/checkpoints/last.pt"
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p, "--data", required=True, help="annotations and image folder")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("predict", help="detect objects in images (JSON on stdout)")
    p.add_argument("model", type=Path, help="a model file (.safetensors) or a checkpoint (.pt)")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument(
        "--score-threshold",
        default="best_f1",
        help="a number in [0, 1], or best_f1: each class's best-F1 threshold from validation",
    )
    p.add_argument("--nms-iou", type=float, default=None)
    p.add_argument("--max-detections", type=int, default=None)
    p.add_argument("--classes", type=int, nargs="+", default=None, metavar="CATEGORY_ID")
    p.add_argument("--tile-size", type=int, default=None, help="tiled inference (pixels)")
    p.add_argument("--tile-overlap", type=float, default=0.25)
    p.add_argument(
        "--draw", type=Path, default=None, metavar="DIR", help="also write PNGs with boxes here"
    )
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("export", help="write a model file (safetensors) or an ONNX graph")
    p.add_argument("model", type=Path, help="a model file (.safetensors) or a checkpoint (.pt)")
    p.add_argument("--format", choices=("safetensors", "onnx"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--images", type=Path, nargs="+", default=None, help="sample images for the ONNX check"
    )
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("anchors", help="per-class anchor fit (best possible recall) for a recipe")
    p.add_argument("recipe", type=Path)
    _add_data_args(p, "--data", required=True, help="training annotations and image folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_anchors)

    add_weights_commands(sub)

    p = sub.add_parser("recipe", help="print a recipe with its bases and overrides resolved")
    p.add_argument("recipe", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_recipe)
    if extra is not None:
        extra(sub)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    _require_file(args.annotations, "annotations")
    _require_dir(args.image_dir, "image folder")
    report = validate_coco(
        args.annotations, args.image_dir, strict=args.strict, decode_images=args.decode
    ).report
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report.to_table(max_items_per_code=args.max_items))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_make_shapes(args: argparse.Namespace) -> int:
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    weights = tuple(float(w) for w in args.weights.split(",")) if args.weights else None
    spec = ShapesSpec(
        num_images=args.images,
        size_px=args.size,
        seed=args.seed,
        classes=classes,
        class_weights=weights or _default_weights(len(classes)),
    )
    val = args.val_images if args.val_images is not None else max(1, args.images // 4)
    splits = [("train", args.images), ("val", val)] + (
        [("test", args.test_images)] if args.test_images else []
    )
    for split, path in make_shapes_splits(args.out, spec, splits=splits).items():
        print(f"{split}: {path}")
    print(f"images: {args.out / 'images'}")
    return EXIT_OK


def cmd_recipe(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, [*data_overrides(args), *args.overrides])
    if cfg.data.test is not None:  # scored at the end: a wrong path must not wait for it
        _require_file(cfg.data.test.annotations, "test annotations")
    stopper = StopOnSignal((signal.SIGTERM, signal.SIGINT))
    callbacks = [ProgressBar(), JsonlEvents(path=args.out / "events.jsonl"), stopper]
    try:
        with warnings.catch_warnings(), stopper:
            warnings.simplefilter("ignore", AnchorFitWarning)  # ProgressBar prints the whole fit
            result = fit(cfg, args.out, callbacks=callbacks, resume=args.resume)
    except NonFiniteLossError as exc:
        raise CliError(
            f"{exc}; the last good checkpoint is kept in {checkpoint_dir(args.out)}"
        ) from None
    if stopper.received is not None:
        # A preempted run is not a finished one: exit as the signal would have, once saved.
        if result.rank == 0:
            # Not result.stop_reason: under DDP the stop may have been agreed from another
            # rank's signal before this rank's arrived, which leaves this rank no reason.
            print(
                f"stopped by {stopper.received.name} after iteration {result.iterations}; "
                f"{last_checkpoint(args.out)} saved, continue with --resume",
                file=sys.stderr,
            )
        return 128 + stopper.received.value
    if result.rank != 0:  # torchrun: rank 0 reports
        return EXIT_OK
    print(
        f"trained {result.iterations} iterations ({result.epochs} epochs)"
        + (f"; {result.stop_reason}" if result.stop_reason else "")
    )
    if result.metrics is not None:
        print("\nvalidation (last epoch):\n" + result.metrics.to_table())
    final = finalize(cfg, args.out)
    if final.test_metrics is not None:
        print(f"\ntest ({final.checkpoint.name}):\n" + final.test_metrics.to_table())
    for plot in final.plots:
        print(f"plot: {plot}")
    if cfg.tracking.tensorboard:
        print(f"tensorboard --logdir {tensorboard_dir(args.out)}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    metrics = Predictor.load(args.checkpoint).evaluate(*args.data, batch_size=args.batch_size)
    print(metrics.model_dump_json(indent=2) if args.json else metrics.to_table())
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    predictor = Predictor.load(args.model)
    threshold = args.score_threshold
    try:
        options = PredictOptions(
            score_threshold=threshold if threshold == "best_f1" else float(threshold),
            nms_iou=args.nms_iou,
            max_detections=args.max_detections,
            class_ids=args.classes,
            tile_size=args.tile_size,
            tile_overlap=args.tile_overlap,
        )
        predictor.check(options)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise CliError(f"invalid prediction options: {exc}") from None
    results = []
    for path in args.images:
        image = read_rgb(path)
        detections = predictor.predict([image], options)[0]
        results.append({"image": str(path), "detections": [d.model_dump() for d in detections]})
        if args.draw is not None:
            draw_detections(image, detections, args.draw / f"{path.stem}.png")
    print(json.dumps(results, indent=2))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "safetensors":
        if args.model.suffix == ".safetensors":
            raise CliError(f"{args.model} is already a model file")
        save_model_file(args.model, args.out)
        print(f"wrote {args.out}")
        return EXIT_OK
    if not args.images:
        raise CliError("--images: the ONNX export is checked against PyTorch on sample images")
    predictor = Predictor.load(args.model, device="cpu")
    size = tuple(args.input_size) if args.input_size else None
    try:
        export = export_onnx(
            predictor, args.out, sample_images=[read_rgb(p) for p in args.images], input_size=size
        )
    except ExportMismatchError as exc:
        raise CliError(f"export refused: {exc}") from None
    print(f"wrote {export.path} (input {export.input_size[0]}x{export.input_size[1]})")
    print(export.report.summary)
    return EXIT_OK


def cmd_anchors(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, args.overrides)
    coco = load_coco(*args.data, strict=cfg.data.strict)
    fit_report = anchor_fit(coco, cfg.model, cfg.data)
    print(fit_report.to_text())
    return EXIT_OK


def _add_data_args(
    parser: argparse.ArgumentParser, flag: str, *, help: str, required: bool = False
) -> None:
    parser.add_argument(
        flag, nargs=2, type=Path, metavar=("ANNOTATIONS", "IMAGE_DIR"), required=required, help=help
    )


def data_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe overrides that ``--data-train/--data-val/--data-test`` pairs stand for."""
    out = []
    for split in ("train", "val", "test"):
        pair = getattr(args, f"data_{split}")
        if pair is not None:
            out += [f"data.{split}.annotations={pair[0]}", f"data.{split}.images={pair[1]}"]
    return out


def _default_weights(num_classes: int) -> tuple[float, ...]:
    """Halving frequencies (1, 1/2, 1/4, ...): imbalanced, as real datasets are."""
    return tuple(0.5**i for i in range(num_classes))


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise CliError(f"{what} file not found: {path}")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise CliError(f"{what} not found: {path}")
