#!/usr/bin/env bash
# Train the GPU configs side by side on one GPU within a wall-clock budget, then measure every
# checkpoint with `evaluate --quick`. This is how the GPU-trained candidates of the shipped model
# were made on a lent H200 (docs/training.md, "On a GPU").
#
#   bash scripts/train_gpu.sh [TRAIN_SECONDS] [RESULTS_DIR]
#
# 1. a short probe of all configs at once measures their images/s when sharing the GPU;
# 2. each config gets the number of steps that fits TRAIN_SECONDS at that rate (so its warm-up and
#    cosine decay run to the end), and a watchdog kills a run that overruns by more than a minute
#    (its last checkpoint export stays, written atomically);
# 3. evaluate --quick on each checkpoint (the learning curve), then the final exports are packed
#    into RESULTS_DIR (tar split into 15 MiB parts: cat PARTS > x.tar to rejoin).
#
# Environment: PYTHON (default python3), CONFIGS (default "emoji32_gpu emoji32_wide_gpu"),
# PROBE_STEPS (default 150), TRAIN_ARGS and EVAL_ARGS (extra flags for every train / evaluate call,
# e.g. "--batch-size 8" and "--setting ddim:2:3" for a dry run on a CPU).
set -uo pipefail
TRAIN_SECONDS=${1:-400}
RESULTS=${2:-artifacts/gpu}
PY=${PYTHON:-python3}
CONFIGS=${CONFIGS:-"emoji32_gpu emoji32_wide_gpu"}
PROBE_STEPS=${PROBE_STEPS:-150}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
mkdir -p "$RESULTS"
LOG="$RESULTS/run.log"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
# a config by name: a shipped recipe in configs/, else an experiment in configs/experiments/
config_of() { if [ -f "configs/$1.json" ]; then echo "configs/$1.json"; else echo "configs/experiments/$1.json"; fi; }

say "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no GPU')"
$PY -c "import torch, huggingface_hub; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'hub', huggingface_hub.__version__)" 2>&1 | tee -a "$LOG"

# 1. probe: all configs at once, so the rate is the shared one
PROBE=$(mktemp -d)
for c in $CONFIGS; do
  $PY -m diffusion_core train --config "$(config_of "$c")" --quiet --max-steps "$PROBE_STEPS" --log-every 50 \
      --checkpoint-every 1000000 --out-dir "$PROBE/$c" --export-dir "$PROBE/$c/export" $TRAIN_ARGS >>"$LOG" 2>&1 &
done
wait
declare -A STEPS
for c in $CONFIGS; do
  rate=$(tail -n 1 "$PROBE/$c/log.csv" | cut -d, -f4)
  batch=$($PY -c "import json; print(json.load(open('$PROBE/$c/config.json'))['batch_size'])")  # flags applied
  steps=$($PY -c "print(max(100, int($rate * $TRAIN_SECONDS * 0.85 / $batch) // 100 * 100))")
  STEPS[$c]=$steps
  say "$c: probe $rate images/s (batch $batch) -> $steps steps in ${TRAIN_SECONDS}s"
done

# 2. the runs, side by side, each under a watchdog
for c in $CONFIGS; do
  every=$(( (STEPS[$c] / 4 + 99) / 100 * 100 ))
  cmd="$PY -m diffusion_core train --config $(config_of "$c") --quiet --max-steps ${STEPS[$c]} --checkpoint-every $every --export-dir runs/$c/export $TRAIN_ARGS"
  say "run: $cmd"
  timeout --signal=KILL $((TRAIN_SECONDS + 60)) $cmd >>"$LOG" 2>&1 &
done
wait
for c in $CONFIGS; do say "$c: last log row $(tail -n 1 runs/$c/log.csv)"; done

# 3. learning curves (every checkpoint), in parallel per config; then the sampling benchmark
for c in $CONFIGS; do
  (
    for d in runs/$c/exports/step_*; do
      echo "## $c $(basename "$d")"
      $PY -m diffusion_core evaluate --model "$d" --quick --no-write $EVAL_ARGS 2>&1 | grep -E '^\| (dpm|real held-out)' | awk '!seen[$0]++'
    done > "$RESULTS/curve_$c.md"
  ) &
done
wait
cat "$RESULTS"/curve_*.md >> "$LOG"
# a GPU row for docs/performance.md's speed table (nothing else running now)
timeout 120 $PY benchmarks/sampling_speed.py > "$RESULTS/sampling_speed.md" 2>>"$LOG"
for c in $CONFIGS; do
  tar -C "runs/$c" -cf - export log.csv config.json | split -b 15M - "$RESULTS/$c.tar.part_"
done
ls -la "$RESULTS" | tee -a "$LOG"
say "done"
