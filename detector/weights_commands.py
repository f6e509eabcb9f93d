"""``retinanet weights pull|list``: torchvision weights fetched into its cache ahead of time.

The one place that downloads (training and tests only ever read the cache). Errors are
:class:`~detector.model.weights.WeightsError`, which the command line prints as one line.
"""

from __future__ import annotations

import argparse

from detector.config import ModelConfig
from detector.model.weight_names import (
    RETINANET_ARCHITECTURES,
    WeightsNameError,
    any_weights,
    cache_dir,
    file_name,
    pull,
    weights_label,
)
from detector.model.weights import WeightsError


def add_weights_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "weights", help="torchvision weights by name: fetch them into the cache ahead of time"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    pull = actions.add_parser(
        "pull", help="download named weights into torchvision's cache (TORCH_HOME), hash checked"
    )
    pull.add_argument(
        "names", nargs="+", metavar="NAME", help="ResNet50_Weights.IMAGENET1K_V2, imagenet, coco"
    )
    pull.add_argument("--backbone", default="resnet50", help="what imagenet and coco are for")
    pull.add_argument("--variant", default="v1", choices=tuple(RETINANET_ARCHITECTURES))
    pull.set_defaults(handler=cmd_weights_pull)
    where = actions.add_parser("list", help="the aliases per backbone, their files and the cache")
    where.set_defaults(handler=cmd_weights_list)


def cmd_weights_pull(args: argparse.Namespace) -> int:
    """The one command that downloads: training and tests only read the cache."""
    try:
        chosen = [any_weights(n, backbone=args.backbone, variant=args.variant) for n in args.names]
    except (WeightsNameError, ValueError) as exc:
        raise WeightsError(str(exc)) from None
    for weights in chosen:
        try:
            path = pull(weights)
        except (OSError, RuntimeError) as exc:  # no network, a bad hash (torch.hub raises these)
            raise WeightsError(
                f"could not fetch {weights_label(weights)} ({weights.url}): {exc}"
            ) from None
        print(f"{weights_label(weights)}: {path}")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    print(f"cache: {cache_dir()}")
    backbones = ModelConfig.model_fields["backbone"].annotation.__args__  # type: ignore[union-attr]
    rows = [
        ("model.backbone_weights=imagenet", b, "", any_weights("imagenet", backbone=b))
        for b in backbones
    ]
    rows += [
        ("model.weights=coco", "resnet50", v, any_weights("coco", variant=v))
        for v in RETINANET_ARCHITECTURES
    ]
    for field, backbone, variant, weights in rows:
        cached = (cache_dir() / file_name(weights)).is_file()
        print(
            f"{field:34} {backbone:20} {variant:3} {weights_label(weights):45} "
            f"{file_name(weights):42} {'cached' if cached else 'missing'}"
        )
    return 0
