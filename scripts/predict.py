#!/usr/bin/env python
"""Detect radio sources in FITS images (cutouts or survey mosaics of any size) and objects in
ordinary images: a source catalogue (CSV, FITS table, VOTable, DS9 regions) + PNGs.

    python scripts/predict.py --model faster_rcnn_fpn_resnet18_v1b_rgz --weights runs/rgz/model_final.pth \\
        --input ../shared/data/mirabest_fits --output predictions/
    python scripts/predict.py --model faster_rcnn_fpn_resnet18_v1b_rgz --weights runs/rgz/model_final.pth \\
        --input mosaic.fits --tile 300 --overlap 96 --format fits votable ds9 --components --output cat/
    python scripts/predict.py --model faster_rcnn_fpn_resnet18_v1b_rgz --weights runs/rgz/model_final.pth \\
        --input field.fits.gz field2.fits.fz --name-prefix FIRST --output cat/

FITS inputs may be .fits, .fits.gz or tile-compressed .fz, in any BUNIT that is a flux density per
beam (Jy/beam, mJy/beam, ...) and any celestial frame; catalogue positions are ICRS, fluxes mJy.
"""
import sys
from importlib.util import find_spec
from pathlib import Path

if find_spec("gluon_rcnn") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_rcnn.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
