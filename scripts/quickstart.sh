#!/usr/bin/env bash
# Set up, generate a small synthetic COCO dataset, validate it, train RetinaNet with the
# focal head on it (CPU is fine: a couple of minutes), and print the COCO metrics table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
work=.quickstart
rm -rf "$work"
.venv/bin/retinanet make-shapes "$work/data" --images 96 --val-images 32 --size 128 --seed 0
.venv/bin/retinanet validate "$work/data/annotations/instances_train.json" "$work/data/images"
.venv/bin/retinanet train configs/shapes_tiny.yaml \
  --data-train "$work/data/annotations/instances_train.json" "$work/data/images" \
  --data-val "$work/data/annotations/instances_val.json" "$work/data/images" \
  --out "$work/run"
