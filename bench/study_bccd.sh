#!/usr/bin/env bash
# Our Table 1 on BCCD: the paper's gamma x alpha grid (5 x 3) against alpha-balanced CE
# (alpha 0.75, the paper's best for CE), SEEDS seeds per cell, each job the bccd_r18 recipe
# shortened to EPOCHS epochs. Jobs run one after another (retinanet study), resumable: run it
# again after an interruption and finished jobs are read back, an interrupted one resumes.
# Budget on the 2-core CPU: 16 cells x SEEDS jobs; in fp32 at 320 px and EPOCHS=6 a job is
# ~20-25 min, so SEEDS=2 (32 jobs) takes ~11-13 h. NUMERICS=bf16 trains in bf16 autocast and
# channels_last (2.3x on an AMX CPU, see docs/benchmarks.md); SIZE sets the image side.
# Output: $OUT/table.json, $OUT/plot.png, the table on stdout (paste it with the plot into
# docs/benchmarks.md, "Focal-loss study").
set -euo pipefail
D=${D:-../shared/datasets/bccd}
OUT=${OUT:-runs/study_bccd}
EPOCHS=${EPOCHS:-6}
SEEDS=${SEEDS:-2}
SIZE=${SIZE:-320}
NUMERICS=${NUMERICS:-fp32}
EXTRA=()
if [ "$NUMERICS" = bf16 ]; then EXTRA=(--set solver.amp=bf16 --set solver.channels_last=true); fi
# LR drops at 3/4 and 11/12 of the budget, as in the 12-epoch BCCD run of docs/benchmarks.md.
S1=$((EPOCHS * 3 / 4 > 0 ? EPOCHS * 3 / 4 : 1)) S2=$((EPOCHS * 11 / 12))
if [ "$EPOCHS" -lt 2 ]; then STEPS="[]"; elif [ "$S2" -gt "$S1" ]; then STEPS="[$S1,$S2]"; else STEPS="[$S1]"; fi
exec "${PYTHON:-.venv/bin/python}" -m service.cli study configs/bccd_r18.yaml \
  --grid loss.gamma=0,0.5,1,2,5 --grid loss.alpha=0.25,0.5,0.75 \
  --seeds "$SEEDS" --baseline-set loss.alpha=0.75 \
  --data-train "$D/annotations/instances_train.json" "$D/images" \
  --data-val "$D/annotations/instances_val.json" "$D/images" \
  --set model.head_convs=4 --set model.head_channels=128 --set loss.box=l1 \
  --set solver.epochs="$EPOCHS" --set solver.steps="$STEPS" --set solver.warmup_iters=35 \
  --set data.num_workers=1 \
  --set "data.train_min_sizes=[$((SIZE * 9 / 10)),$SIZE,$((SIZE * 11 / 10))]" \
  --set data.eval_min_size="$SIZE" --set data.max_size="$(((SIZE * 4 + 2) / 3))" \
  "${EXTRA[@]}" --out "$OUT"
