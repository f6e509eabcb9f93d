#!/usr/bin/env bash
# Set up, then the main job over HTTP: start the service on its embedded defaults (SQLite,
# one worker), upload a generated COCO dataset, post a training job, follow it, print mAP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf .quickstart
exec .venv/bin/python scripts/quickstart.py
