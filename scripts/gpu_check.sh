#!/usr/bin/env bash
# The prepared GPU check, for a session that is lent a CUDA machine (one run; ~5-8 min on one H200, boxes 580 s):
#   here:  bash scripts/gpu_wheels.sh          (once: wheels of what the GPU image lacks, into .whl/)
#   there: bash scripts/gpu_check.sh           (device tool: carry [".whl"], timeout_s 600; results under $OUT)
# Steps, each time-boxed, each result in its own file under $OUT (default runs/gpu_check):
#   env.txt        nvidia-smi, torch / CUDA / Lightning versions, bf16 support
#   gpu_tests.log  tests/test_gpu.py: bf16-mixed / 16-mixed / 32-true training, DDP on a CUDA device, PINN
#                  derivatives kept in fp32 under autocast
#   fast_gpu.log   every paper's fast contract test on the GPU with automatic mixed precision
#                  (PAPERZOO_FAST_TRAINER=gpu, tests/papers/contract.py)
#   precision.log + precision_speed.json   `zoo bench mixed_precision`: step time at bf16-mixed / 16-mixed vs
#                  32-true through the trainer (benchmarks/precision_speed.py)
#   bench.log + itransformer_speed.json   `zoo bench itransformer --device cuda` (its CUDA rows only), then
#                  `zoo bench <slug> --quick --device cuda` for the other GPU paths while time is left (bench_quick_cuda)
#   summary.txt    exit status and seconds of each step
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
source scripts/gpu_site.sh  # the carried wheels, PYTHONPATH
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PAPERZOO_DATA=${PAPERZOO_DATA:-/tmp/paperzoo_data}

ONLY=${ONLY:-}  # e.g. ONLY="fast_contracts_on_gpu bench_mixed_precision": a rerun of some steps only
step() {  # step NAME TIMEOUT_S LOGFILE COMMAND...
  local name=$1 limit=$2 log=$3; shift 3
  [[ -z "$ONLY" || " $ONLY " == *" $name "* ]] || return 0
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (log $log)" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$log"
}

{ nvidia-smi; "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'lightning', lightning.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|lightning|torchmetrics|torch.geometric|numpy|scipy) '; } \
  > "$OUT/env.txt" 2>&1
tail -n 1 "$OUT/env.txt"
step gpu_tests 110 gpu_tests.log "$PY" -m pytest tests/test_gpu.py -q -p no:cacheprovider
step fast_contracts_on_gpu 150 fast_gpu.log env PAPERZOO_FAST_TRAINER=gpu "$PY" -m pytest tests/papers -m "not slow" \
  -k fast -n 8 -q -p no:cacheprovider --timeout 120
# benchmark tables go to a scratch folder and only their .json come back (the device tool returns 8 files at most)
step bench_mixed_precision 120 precision.log "$PY" -m launch.cli bench mixed_precision --out /tmp/paperzoo_bench
step bench_itransformer 200 bench.log "$PY" -m launch.cli bench itransformer --device cuda --out /tmp/paperzoo_bench
# the other benchmarks' --device cuda paths (pairing, synchronisation, peak GPU memory), quick sizes, while the
# 580 s box has room; appended to bench.log (the device tool returns 8 files at most)
bench_quick_cuda() {
  local slug
  for slug in causal_pinn pig mgno gtf_plrnn data_free_mesh_mover um2n; do
    if ((SECONDS > 500)); then echo "bench_quick_cuda: no time left for $slug"; continue; fi
    echo "== zoo bench $slug --quick --device cuda"
    timeout 60 "$PY" -m launch.cli bench "$slug" --quick --device cuda --out /tmp/paperzoo_bench_quick
    echo "exit $?"
  done
}
if [[ -z "$ONLY" || " $ONLY " == *" bench_quick_cuda "* ]]; then
  t0=$SECONDS
  bench_quick_cuda >> "$OUT/bench.log" 2>&1
  echo "bench_quick_cuda: done in $((SECONDS - t0)) s (appended to bench.log)" | tee -a "$OUT/summary.txt"
fi
cp /tmp/paperzoo_bench/precision_speed.json /tmp/paperzoo_bench/itransformer_speed.json "$OUT"/ 2>/dev/null
