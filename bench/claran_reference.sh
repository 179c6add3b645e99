#!/usr/bin/env bash
# ClaRAN v0.2's own inference graph on real FIRST cutouts: the reference of bench/compare_claran.py and of
# tests/data/claran_reference/first_d1.npz (docs/claran.md, "A converted ClaRAN model gives ClaRAN's own
# detections"). Needs the tensorpack-reference tool's TensorFlow 2.15 venv and its 2019 driver
# (../shared/tools/tensorpack-reference: make_reference.sh with TP_COMMIT=02c38f26 builds both and extracts
# the 2019 tree), a git mirror of github.com/chenwuperth/claran, and for the gist_heat cases DS9's colour
# table (Debian: apt-get install saods9). About 3 min per cutout on two busy cores.
#
#   TP_SRC=/path/src-02c38f26 TP_VENV=/path/venv CLARAN_GIT_DIR=/path/claran.git ROOT=/tmp/claran \
#     bash bench/claran_reference.sh
#   .venv/bin/python bench/compare_claran.py $ROOT/out/claran_{0,1,2,3} --fits <the four specs below> \
#     [--write-test-reference tests/data/claran_reference/first_d1.npz]
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cd "$HERE"
: "${TP_SRC:?folder holding tensorpack/ of commit 02c38f26}" "${TP_VENV:?the venv of the reference tool}"
: "${CLARAN_GIT_DIR:?git dir of github.com/chenwuperth/claran}" "${ROOT:?scratch folder}"
DRIVER="${DRIVER:-$HERE/../shared/tools/tensorpack-reference/make_reference_2019.py}"
CLARAN_COMMIT=9ccc64997c552a4ac32ab7a67b2487e935c4adb4
mkdir -p "$ROOT/src/examples/FasterRCNN" "$ROOT/png" "$ROOT/out"
ln -sfn "$(cd "$TP_SRC" && pwd)/tensorpack" "$ROOT/src/tensorpack"
git --git-dir="$CLARAN_GIT_DIR" archive "$CLARAN_COMMIT" | tar -x -C "$ROOT/src/examples/FasterRCNN"

# the cutouts, exported as DS9 does (render_d1_ds9 equals DS9 8.4.1's PNG byte for byte)
SPECS=("100_114.330+029.492_0.1105_0034.32.fits:84:84:132:grey" "102_035.887-008.961_0.4145_0027.54.fits:84:84:132:grey"
       "200_163.505+022.261_0.2603_0011.05.fits:84:84:132:heat" "310_203.103+018.350_0.5049_0034.63.fits:84:84:132:heat")
i=0
for spec in "${SPECS[@]}"; do
  "$HERE/.venv/bin/python" - "$spec" "$ROOT/png/case$i.png" <<'EOF'
import sys, cv2
sys.path.insert(0, "bench")
from compare_claran import render_cutout
cv2.imwrite(sys.argv[2], render_cutout(sys.argv[1])[:, :, ::-1])
EOF
  OMP_NUM_THREADS=2 nice -n 10 "$TP_VENV/bin/python" "$DRIVER" --src "$ROOT/src" --image "$ROOT/png/case$i.png" \
    --out "$ROOT/out/claran_$i" --weights spread --seed 0 \
    --config MODE_MASK=False MODE_FPN=True PREPROC.TRAIN_SHORT_EDGE_SIZE=600,600 PREPROC.TEST_SHORT_EDGE_SIZE=600 \
    > "$ROOT/out/claran_$i.log" 2>&1
  echo "case $i ($spec): $(grep '^num detections' "$ROOT/out/claran_$i.log")"
  i=$((i + 1))
done
echo "--fits ${SPECS[*]}"
