#!/usr/bin/env bash
# The GPU check of issue 13, for one H100/H200 in under 8 minutes (each step has its own time limit):
#   1. bf16 training img/s and fp32 inference img/s at batch 1 and 8, ours vs torchvision in one process,
#      COCO size (800/1333), peak memory           (bench/compare.py, alternating windows)
#   2. fp32 detections on CUDA == on the CPU, eager and hybridize()   (bench/gpu_equality.py)
#   3. two training steps under torchrun with NCCL and SyncBN          (bench/gpu_nccl_check.py)
# Prints one table at the end (the lines each step ends with). Images: coco128 when ../shared/data is
# there, else synthetic (GLUON_RCNN_BENCH_SYNTHETIC=1; the models have random weights either way).
#   bash bench/gpu_check.sh [python]          (default: .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export GLUON_RCNN_BENCH_SYNTHETIC=1 PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-/tmp}/gpu_check"; mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
step() {  # name, limit seconds, command...
    local name="$1" limit="$2"; shift 2
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc $rc, $((SECONDS - t0)) s"
    echo "$name|$rc|$((SECONDS - t0))" >> "$LOG/summary"
}
: > "$LOG/summary"
step compare 270 "$PY" bench/compare.py --device cuda --windows 3
step equality 120 "$PY" bench/gpu_equality.py --images 4
NGPU=$("$PY" -c "import torch; print(min(2, torch.cuda.device_count()))")
step nccl 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" bench/gpu_nccl_check.py
echo
echo "## GPU check summary"
echo "| step | rc | seconds | result |"
echo "| --- | ---: | ---: | --- |"
while IFS='|' read -r name rc secs; do
    res=$(grep -E "PASS|FAIL|img/s|ours/torchvision" "$LOG/$name.log" | tail -1)
    echo "| $name | $rc | $secs | ${res//|/\\|} |"
done < "$LOG/summary"
echo
sed -n '/gluon_rcnn vs torchvision/,$p' "$LOG/compare.log"
