#!/usr/bin/env bash
# Every GPU check of this project in one go, for a machine lent for minutes (each stage has its own
# time limit, so one that hangs or fails does not cost the rest). Logs and JSON go to $1 (default
# ./gpu-results). Run from the repository root on a CUDA machine where `python3` has torch:
#     bash bench/gpu_session.sh OUT_DIR [BASELINE]      # BASELINE: commit or folder holding lipcore/
# 1. certificates on the GPU equal the CPU's (bench/gpu_certify.py), the correctness check first;
# 2. issue 9's table: every row's train step, eager fp32 (bench/gpu.py);
# 3. the full CIFAR-10 command's epoch time, eager, then compiled (torch.compile, inductor);
# 4. compiled and bf16 steps of KWL-Sandwich-small; 5. step time against BASELINE, a few rows.
set -u
out=${1:-gpu-results}
base=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  echo "== $name: rc $rc, $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
stage certify 100 python3 bench/gpu_certify.py --n 128 --json "$out/certify.json"
stage rows 140 python3 bench/gpu.py --no-full --json "$out/rows.json"
stage full-eager 120 python3 bench/gpu.py --models KWL-Sandwich-small --steps 5 --json "$out/full-eager.json"
stage compiled 100 python3 bench/gpu.py --no-full --compile on --models KWL-Sandwich-small,KWL-Aol-small --json "$out/compiled.json"
stage bf16 40 python3 bench/gpu.py --no-full --precision bf16 --models KWL-Sandwich-small,KWL-Sandwich-large --json "$out/bf16.json"
if [ -n "$base" ]; then
  stage baseline 80 python3 bench/gpu.py --no-full --steps 10 --baseline "$base" \
    --models KWL-Sandwich-small,KWL-Aol-small,Resnet-SLL-small,DNN-Sandwich-small --json "$out/baseline.json"
fi
