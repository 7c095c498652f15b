#!/usr/bin/env bash
# The prepared GPU check, for a session that is lent a CUDA machine (one short run; ~6-8 min on one H200):
#   here:  bash scripts/gpu_wheels.sh          (once: wheels of what the GPU image lacks, into .whl/)
#   there: bash scripts/gpu_check.sh           (device tool: carry [".whl"]; results under $OUT)
# Steps, each time-boxed, each result in its own file under $OUT (default runs/gpu_check):
#   env.txt        nvidia-smi, torch / CUDA versions, bf16 support
#   gpu_tests.log  tests/test_gpu.py: bf16-mixed / 16-mixed / 32-true training, DDP on a CUDA device, PINN
#                  derivatives kept in fp32 under autocast
#   fast_gpu.log   every paper's fast contract test on the GPU with automatic mixed precision
#                  (PAPERZOO_FAST_TRAINER=gpu, tests/papers/contract.py)
#   bench.log + itransformer_speed.{json,md}   `zoo bench itransformer` (CUDA rows added when a GPU is present)
#   summary.txt    exit status of each step
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/paperzoo_site \
    .whl/*.whl || { echo "installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/paperzoo_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PAPERZOO_DATA=${PAPERZOO_DATA:-/tmp/paperzoo_data}

step() {  # step NAME TIMEOUT_S LOGFILE COMMAND...
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (log $log)" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$log"
}

{ nvidia-smi; "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'lightning', lightning.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"; } \
  > "$OUT/env.txt" 2>&1
tail -n 1 "$OUT/env.txt"
step gpu_tests 180 gpu_tests.log "$PY" -m pytest tests/test_gpu.py -q -p no:cacheprovider
step fast_contracts_on_gpu 300 fast_gpu.log env PAPERZOO_FAST_TRAINER=gpu "$PY" -m pytest tests/papers -m "not slow" \
  -n 8 -q -p no:cacheprovider --timeout 150
step bench_itransformer 200 bench.log "$PY" -m launch.cli bench itransformer --out "$OUT"
