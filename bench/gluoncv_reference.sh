#!/usr/bin/env bash
# GluonCV's own outputs for seeded random weights, in a side venv outside the repository.
#
#   bench/gluoncv_reference.sh                       # venv in $ROOT (default /work/gcv-ref), outputs in $ROOT/out
#   ROOT=/scratch/gcv bench/gluoncv_reference.sh --short 320 --max-size 512 --images a.jpg
#
# Makes $ROOT/venv with python3.11 and mxnet==1.9.1 gluoncv==0.10.5.post0 numpy==1.23.5 (GluonCV still
# uses np.float, removed in numpy 1.24; its other imports — opencv, pandas, scipy, matplotlib, yacs,
# portalocker, autocfg... — come as gluoncv's dependencies), then runs bench/gluoncv_reference.py under
# it (arguments passed through; default: both C4 R-50 models on images 89 and 508 of tests/data/coco_subset
# at GluonCV's 800/1333; --classifier-std S draws class_predictor.weight with std S). Compare with: .venv/bin/python bench/compare_gluoncv.py $ROOT/out/*.meta.json
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${ROOT:-/work/gcv-ref}"
PY="${PYTHON:-python3.11}"
DATA="${DATA:-$HERE/../tests/data/coco_subset/train2017}"
if [ ! -x "$ROOT/venv/bin/python" ] || ! "$ROOT/venv/bin/python" -c "import mxnet, gluoncv" 2>/dev/null; then
    mkdir -p "$ROOT"
    "$PY" -m venv "$ROOT/venv"
    "$ROOT/venv/bin/pip" install -q mxnet==1.9.1 gluoncv==0.10.5.post0 numpy==1.23.5
fi
"$ROOT/venv/bin/python" -c "import mxnet, gluoncv; print('mxnet', mxnet.__version__)"
if [ "$#" -eq 0 ]; then
    set -- --images "$DATA/000000000089.jpg" "$DATA/000000000508.jpg"
fi
case " $* " in *" --out "*) ;; *) set -- --out "$ROOT/out" "$@" ;; esac
exec nice "$ROOT/venv/bin/python" "$HERE/gluoncv_reference.py" "$@"
