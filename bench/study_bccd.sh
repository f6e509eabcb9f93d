#!/usr/bin/env bash
# Our Table 1 on BCCD: the paper's gamma x alpha grid (5 x 3) against alpha-balanced CE
# (alpha 0.75, the paper's best for CE), SEEDS seeds per cell, each job the bccd_r18 recipe
# shortened to EPOCHS epochs, PROCESSES jobs at once (retinanet study), resumable: run it again
# after an interruption and finished jobs are read back, an interrupted one resumes.
# Each job is bccd_r18 with GroupNorm from scratch (variant v2: backbone and head towers) at
# batch 4, the quick start's two levers (no running statistics to lag the weights, twice the
# updates): at 256 px the default cell reaches val AP50 81.0 after 5 epochs, where 3-epoch
# jobs of the recipe as it is (BatchNorm, batch 8) ended between 0.5 and 15. Budget on the 2-core CPU at the defaults (256 px, EPOCHS=6, bf16 autocast
# + channels_last, PROCESSES=2 jobs at once on a core each): ~6.5 min a job, 32 jobs in ~1 h 50.
# NUMERICS=fp32 trains in fp32 (bf16 is 2-4x faster only on CPUs with AMX/avx512_bf16).
# Output: $OUT/table.json, $OUT/plot.png, the table on stdout (paste it with the plot into
# docs/benchmarks.md, "Focal-loss study").
set -euo pipefail
D=${D:-../shared/datasets/bccd}
OUT=${OUT:-runs/study_bccd}
EPOCHS=${EPOCHS:-6}
SEEDS=${SEEDS:-2}
SIZE=${SIZE:-256}
NUMERICS=${NUMERICS:-bf16}
PROCESSES=${PROCESSES:-2}
EXTRA=()
if [ "$NUMERICS" = bf16 ]; then EXTRA=(--set solver.amp=bf16 --set solver.channels_last=true); fi
# One LR drop at 5/6 of the budget (as the quick start's recipe).
if [ "$EPOCHS" -lt 2 ]; then STEPS="[]"; else STEPS="[$((EPOCHS * 5 / 6))]"; fi
exec "${PYTHON:-.venv/bin/python}" -m service.cli study configs/bccd_r18.yaml \
  --grid loss.gamma=0,0.5,1,2,5 --grid loss.alpha=0.25,0.5,0.75 \
  --seeds "$SEEDS" --baseline-set loss.alpha=0.75 \
  --data-train "$D/annotations/instances_train.json" "$D/images" \
  --data-val "$D/annotations/instances_val.json" "$D/images" \
  --set model.variant=v2 --set model.norm=gn --set solver.batch_size=4 \
  --set solver.epochs="$EPOCHS" --set solver.steps="$STEPS" --set solver.warmup_iters=50 \
  --set data.num_workers=0 \
  --set "data.train_min_sizes=[$((SIZE * 9 / 10)),$SIZE,$((SIZE * 11 / 10))]" \
  --set data.eval_min_size="$SIZE" --set data.max_size="$(((SIZE * 4 + 2) / 3))" \
  "${EXTRA[@]}" --processes "$PROCESSES" --out "$OUT"
