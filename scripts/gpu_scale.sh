#!/usr/bin/env bash
# The known-gap claims at a larger training budget on a GPU (one run of the device tool; boxes ~6 min):
#   here:  bash scripts/gpu_wheels.sh            (once)
#   there: bash scripts/gpu_scale.sh             (carry [".whl"]; or after gpu_check.sh in the same command)
# The CPU claim tests keep the cards' CPU-scale budgets; these runs answer "is the gap the budget?": the same claim
# (`zoo check <slug> --claim NAME`), the same method and config, only trained ~10x longer (trainer.max_steps or
# max_epochs), in float32 (trainer.precision=32-true: as on the CPU; no autocast), on the GPU. Every job runs in
# parallel (one thread each; 16 cores, one GPU), stops each training after SCALE_SECONDS (120; Lightning's max_time, the
# test still runs; a claim with two trained runs takes twice that) and has its own data folder. Results: $OUT/scale.md (every job's claim table, steps taken), logs in
# $OUT/scale_logs.txt (the device tool brings back 8 files at most).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
source scripts/gpu_site.sh  # the carried wheels (skipped when gpu_check.sh installed them), PYTHONPATH
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SECONDS_MAX=${SCALE_SECONDS:-120}
BOX=${SCALE_BOX_S:-330}
COMMON=(trainer=gpu trainer.precision=32-true threads=1 "+trainer.max_time={seconds:$SECONDS_MAX}")
SCRATCH=/tmp/paperzoo_scale
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"

job() {  # job NAME SLUG OVERRIDES... (claims picked with --claim inside OVERRIDES)
  local name=$1 slug=$2; shift 2
  mkdir -p "$SCRATCH/$name/data"
  ( PAPERZOO_DATA="$SCRATCH/$name/data" timeout "$BOX" "$PY" -m launch.cli check "$slug" "${COMMON[@]}" "$@" \
      --out "$SCRATCH/$name/checks" > "$SCRATCH/$name/log.txt" 2>&1
    echo "exit $?" >> "$SCRATCH/$name/log.txt" ) &
}

t0=$SECONDS
# data-free mesh mover: residual, boundary, node RMSE, valid mesh share the one method run (CPU: 1,500 steps)
job dmm_s0 data_free_mesh_mover trainer.max_steps=15000 seed=0 --claim ma_residual --claim boundary --claim node_rmse
job dmm_s1 data_free_mesh_mover trainer.max_steps=15000 seed=1 --claim ma_residual --claim boundary --claim node_rmse
# UM2N: every claim of the module shares its run (CPU: 400 steps)
job um2n_s0 um2n trainer.max_steps=4000 seed=0
job um2n_s1 um2n trainer.max_steps=4000 seed=1
# NODA with the card's 25 % spatial sensors and gate (the default, the paper's full-grid measurements and gain
# K(u^f), passes on the CPU): predictor sanity and the two assimilation claims share the run (CPU: 1,500 steps)
job noda_s0 semilinear_operator trainer.max_steps=15000 seed=0 data.obs_fraction=0.25 model.gate_input=forecast_innovation
job noda_s1 semilinear_operator trainer.max_steps=15000 seed=1 data.obs_fraction=0.25 model.gate_input=forecast_innovation
# MEDIDA 1-D spectral bias: RFF and plain MLP (CPU: 2,000 steps)
job medida_1d medida trainer.max_steps=20000 --claim spectral_bias
# GTF vs BPTT is no longer a gap: its claim trains 120 epochs on the CPU and passes (seeds 0-5, 2026-12-05)
wait
echo "scale jobs done in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
{
  for dir in "$SCRATCH"/*/; do
    name=$(basename "$dir")
    echo "## $name ($(tail -n 1 "$dir/log.txt"))"
    cat "$dir"/checks/*.md 2>/dev/null || echo "(no results)"
    echo
  done
} > "$OUT/scale.md"
for dir in "$SCRATCH"/*/; do echo "===== $(basename "$dir")"; grep -v "known gap" "$dir/log.txt" | tail -n 15; done \
  > "$OUT/scale_logs.txt"
cat "$OUT/scale.md"
