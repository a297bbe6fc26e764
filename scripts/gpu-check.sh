#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU, run the GPU tests and the GPU benchmarks
# (step time, activation memory, the pipeline with ranks sharing the GPU, bf16) and write result
# files under benchmarks/results/. Budget: about 8 minutes on an H100/H200 (each part has its own
# timeout so one slow part cannot eat the rest). Usage, from the repository root:
#
#     bash scripts/gpu-check.sh            # after 'make install' (uses .venv)
#
# Fashion-MNIST must be installed (or carried: DEGL_DATA_DIR=DIR holding its four .gz files).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEGL=${DEGL:-.venv/bin/degl}
status=0

"$PY" - <<'PY' || exit 2
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu-check: no CUDA GPU is visible; nothing to check")
print("gpu-check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda)
PY

part() {  # part SECONDS NAME -- COMMAND...: run it, note a failure, go on with the others
    local seconds=$1 name=$2
    shift 3
    echo "== $name"
    local start=$SECONDS
    timeout "$seconds" "$@" || { echo "gpu-check: $name FAILED (exit $?)"; status=1; }
    echo "== $name: $((SECONDS - start)) s"
}

bench() {  # bench SECONDS NAME DEGL-ARGS...: a result file via benchmarks/report.py
    local seconds=$1 name=$2
    shift 2
    part "$seconds" "$name" -- "$PY" benchmarks/report.py --name "$name" -- "$DEGL" "$@"
}

part 150 "GPU tests" -- "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py
common=(--model cnn6 --stages 4 --batch-size 128 --input-shape 3,32,32 --device cuda)
bench 60 gpu-bench-step-cnn6-k4-b128 bench step "${common[@]}" --warmup 5 --repeats 30
bench 60 gpu-bench-step-cnn6-k4-b128-bf16 bench step "${common[@]}" --warmup 5 --repeats 30 --precision bf16
bench 60 gpu-bench-memory-cnn6-k4-b128 bench memory "${common[@]}"
bench 90 gpu-bench-pipeline-cnn6-k2-b128-shared-gpu bench pipeline --model cnn6 --stages 2 --workers 2 \
    --batch-size 128 --input-shape 3,32,32 --device cuda --rounds 3 --steps 30 --warmup 5
bench 90 gpu-bench-pipeline-cnn6-k2-b128-shared-gpu-bf16 bench pipeline --model cnn6 --stages 2 --workers 2 \
    --batch-size 128 --input-shape 3,32,32 --device cuda --precision bf16 --rounds 3 --steps 30 --warmup 5
exit $status
