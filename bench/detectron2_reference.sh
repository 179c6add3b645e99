#!/usr/bin/env bash
# detectron2's own outputs for seeded weights, in a side venv outside the repository.
#
#   bench/detectron2_reference.sh                          # venv + source in $ROOT (default /tmp/d2ref), outputs in $ROOT/out
#   ROOT=/scratch/d2 bench/detectron2_reference.sh --configs COCO-Detection/faster_rcnn_R_50_C4_1x.yaml
#
# detectron2 has no wheel on the package registry, so this builds it from its source for the CPU:
# the source is `git archive` of commit $D2_COMMIT (default 02b5c4e2, version 0.6) from the fetch
# tool's mirror of facebookresearch/detectron2 ($MIRROR), unpacked into $ROOT/src. The venv
# ($ROOT/venv, python3.11) gets torch==2.14.1 torchvision==0.29.1 (the plain registry build; it runs
# without a GPU), detectron2's Python dependencies with setuptools<81 (detectron2.model_zoo imports
# pkg_resources, gone from setuptools 81), then detectron2 itself with FORCE_CUDA unset, MAX_JOBS=2
# and `pip install --no-build-isolation --use-pep517 --no-deps -e` (without --use-pep517 pip's
# legacy editable install rebuilds in isolation and fails with "No module named 'torch'").
# Each step is skipped when it is already done. Then runs bench/detectron2_reference.py under it
# (arguments passed through; default: the four compared configs on three tests/data/coco_subset
# images at detectron2's 800/1333). Compare with: .venv/bin/python bench/compare_detectron2.py $ROOT/out/*.meta.json
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${ROOT:-/tmp/d2ref}"
PY="${PYTHON:-python3.11}"
MIRROR="${MIRROR:-/work/.mirror/facebookresearch+detectron2/repo}"
D2_COMMIT="${D2_COMMIT:-02b5c4e2}"
mkdir -p "$ROOT"
if [ ! -f "$ROOT/src/setup.py" ]; then
    [ -d "$MIRROR" ] || { echo "no detectron2 mirror at $MIRROR: fetch github:facebookresearch/detectron2 first (or set MIRROR to a bare clone)" >&2; exit 2; }
    rm -rf "$ROOT/src.tmp" && mkdir -p "$ROOT/src.tmp"
    git --git-dir="$MIRROR" archive "$D2_COMMIT" | tar -x -C "$ROOT/src.tmp"
    echo "$D2_COMMIT" > "$ROOT/src.tmp/COMMIT"
    mv "$ROOT/src.tmp" "$ROOT/src"
fi
if [ ! -x "$ROOT/venv/bin/python" ]; then
    "$PY" -m venv "$ROOT/venv"
fi
V="$ROOT/venv/bin"
if ! "$V/python" -c "import torch, torchvision, fvcore, pycocotools, omegaconf, pkg_resources" 2>/dev/null; then
    "$V/pip" install -q torch==2.14.1 torchvision==0.29.1
    "$V/pip" install -q "setuptools<81" wheel ninja packaging Pillow matplotlib pycocotools termcolor \
        yacs tabulate cloudpickle tqdm tensorboard "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" \
        "omegaconf>=2.1,<2.4" "hydra-core>=1.1" black
fi
if ! "$V/python" -c "from detectron2 import _C" 2>/dev/null; then
    (cd "$ROOT/src" && env -u FORCE_CUDA MAX_JOBS=2 nice "$V/pip" install -q --no-build-isolation --use-pep517 --no-deps -e .)
fi
"$V/python" -c "import torch, detectron2; from detectron2 import _C; print('detectron2', detectron2.__version__, 'commit', open('$ROOT/src/COMMIT').read().strip(), 'torch', torch.__version__)"
case " $* " in *" --out "*) ;; *) set -- --out "$ROOT/out" "$@" ;; esac
exec nice "$V/python" "$HERE/detectron2_reference.py" "$@"
