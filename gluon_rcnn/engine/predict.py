"""Run a detector over FITS files (and ordinary images): a catalogue CSV and one PNG per image.

CSV columns: ``file, class, score, x1, y1, x2, y2, ra_deg, dec_deg``. Boxes are in the input
image's own 0-based pixel grid as astropy's ``pixel_to_world`` takes it (pixel ``i`` is centred on
``i``; the FITS's full resolution, whatever size the network saw); RA and Dec (degrees, the
WCS's frame, e.g. FK5 J2000) are those of the box centre. Ordinary images have no WCS: empty
RA/Dec.
"""
from __future__ import annotations

import csv
import logging
import glob
import os
import sys
from pathlib import Path

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

__all__ = ["collect_inputs", "predict_files"]

logger = logging.getLogger(__name__)


def collect_inputs(inputs) -> list[Path]:
    """Files from a mix of files, folders and glob patterns, FITS and images, sorted, each once."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [f for f in sorted(p.iterdir()) if f.name.lower().endswith(FITS_SUFFIXES + IMAGE_SUFFIXES)]
        elif p.is_file():
            out.append(p)
        else:
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise FileNotFoundError(f"input {item} does not exist")
            out += [Path(m) for m in matches]
    seen, unique = set(), []
    for f in out:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    if not unique:
        raise FileNotFoundError(f"no FITS or image files in {list(inputs)}")
    return unique


def _stem(path: Path) -> str:
    """The file name without its FITS/image suffix (names such as 100_114.330+029.492.fits keep their dots)."""
    name = path.name
    for suf in sorted(FITS_SUFFIXES + IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _load(path: Path, render: str, ir_dir):
    """(rgb uint8 HxWx3, wcs or None)."""
    if path.name.lower().endswith(FITS_SUFFIXES):
        from ..radio import render_fits
        rgb, wcs, _ = render_fits(path, render, ir_dir)
        return rgb, wcs
    from ..data.image_io import read_image  # raises DatasetError (a ValueError) naming the file
    return read_image(path), None


def predict_files(model, files, output_dir, score_thresh: float | None = None, render: str = "D1", ir_dir=None,
                  device="cpu", progress: bool = True, skip_bad_images: bool = False,
                  skipped: list | None = None) -> Path:
    """Detect on each file; write ``output_dir/catalogue.csv`` and ``output_dir/<stem>.png``
    (detections scoring >= ``score_thresh``; default the model config's TEST.RESULT_SCORE_THRESH_VIS).

    A file that cannot be decoded (truncated, corrupt, empty, unsupported; a FITS without image
    data) raises an error naming it, and nothing is written; with ``skip_bad_images`` it is logged,
    left out, and its message appended to ``skipped``, and the count is logged at the end."""
    import torch
    from tqdm import tqdm

    from ..radio import pixel_boxes_to_world
    from ..viz import draw_detections, save_png, vis_score_thresh

    if score_thresh is None:
        score_thresh = vis_score_thresh(model)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "catalogue.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    bad = skipped if skipped is not None else []
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "score", "x1", "y1", "x2", "y2", "ra_deg", "dec_deg"])
        for path in tqdm(files, desc="predict", disable=not progress):
            try:
                rgb, wcs = _load(path, render, ir_dir)
            except (ValueError, OSError) as e:  # DatasetError / FITSError are ValueErrors naming the file
                if not skip_bad_images:
                    raise
                logger.warning("skipping a bad input: %s", e)
                bad.append(f"{path}: {e}" if str(path) not in str(e) else str(e))
                continue
            with torch.inference_mode():
                det = model([torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(device)])[0]
            keep = det["scores"] >= score_thresh
            boxes = det["boxes"][keep].float().cpu().numpy()
            scores = det["scores"][keep].float().cpu().numpy()
            labels = det["labels"][keep].cpu().numpy()
            # model boxes are continuous pixels (pixel i spans [i, i+1)); astropy's 0-based grid
            # centres pixel i on i: shift by half a pixel
            grid = boxes - 0.5
            if wcs is not None and len(grid):
                ra, dec = pixel_boxes_to_world(grid, wcs, pixel_centre_offset=0.0)
            else:
                ra = dec = [None] * len(grid)
            for b, s, l, r, d in zip(grid, scores, labels, ra, dec):
                w.writerow([path.name, model.classes[int(l) - 1], f"{s:.4f}", *(f"{v:.4f}" for v in b),
                            "" if r is None else f"{r:.6f}", "" if d is None else f"{d:.6f}"])
            save_png(out / (_stem(path) + ".png"),
                     draw_detections(rgb, boxes, scores, labels, model.classes, thresh=score_thresh, thickness=1))
    os.replace(tmp, csv_path)
    if bad:
        logger.warning("%d of %d input file(s) were bad and skipped", len(bad), len(files))
    return csv_path
