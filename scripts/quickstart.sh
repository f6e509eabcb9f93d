#!/usr/bin/env bash
# Set up, then the main job over HTTP: start the service on its embedded defaults (SQLite,
# one worker), upload a generated COCO dataset, post a training job, follow it, print mAP;
# then say how to open the dashboard on what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf .quickstart
.venv/bin/python scripts/quickstart.py
cat <<'EOF'

The dashboard shows this run (its datasets, the job's curves and per-class table, the model
with "try it"). Start the service on the quick start's data, locally without a key, and open
http://127.0.0.1:8000/ in a browser:

  RETINANET_DATA_DIR=.quickstart/service RETINANET_AUTH_DISABLED=true .venv/bin/retinanet serve --port 8000
EOF
