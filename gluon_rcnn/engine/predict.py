"""Run a detector over ordinary images: a detections CSV and one PNG per image.

CSV columns: ``file, class, score, x1, y1, x2, y2``. Boxes are in the image's own 0-based pixel
grid (pixel ``i`` is centred on ``i``; the image's full resolution, whatever size the network saw).

FITS images (radio surveys: tiling, sky positions, source catalogues) go through
:mod:`gluon_rcnn.radio.survey` (the ``radio`` extra); this module never imports it, and
:func:`predict_files` refuses FITS files. :func:`split_inputs` separates the two kinds.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from ..utils.io import atomic_write


FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz", ".fz")  # .fz: tile-compressed (fpack)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

__all__ = ["collect_inputs", "is_fits", "split_inputs", "predict_files", "output_stem", "staged_outputs"]

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


def is_fits(path) -> bool:
    return Path(path).name.lower().endswith(FITS_SUFFIXES)


def split_inputs(files) -> tuple[list[Path], list[Path]]:
    """(FITS files, other images), each in the given order."""
    files = [Path(f) for f in files]
    return [f for f in files if is_fits(f)], [f for f in files if not is_fits(f)]


def output_stem(path: Path) -> str:
    """The file name without its FITS/image suffix (names such as 100_114.330+029.492.fits keep their dots)."""
    name = path.name
    for suf in sorted(FITS_SUFFIXES + IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


@contextmanager
def staged_outputs():
    """All or nothing for a run's many output files: ``with staged_outputs() as stage:`` then
    ``stage(final_path)`` gives the temporary path to write instead (``.<stem>.<pid>.partial<suffix>``
    beside it: the same folder, the same suffix for writers that read it). When the block ends
    normally every file is moved into place (``os.replace``); when it raises (a bad input, an
    interrupt) the temporary files are removed and the final paths are untouched: a failed run leaves
    nothing half-written, and no output of an earlier run is replaced by part of a new one."""
    staged: list[tuple[Path, Path]] = []

    def stage(final) -> Path:
        final = Path(final)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")
        staged.append((tmp, final))
        return tmp

    try:
        yield stage
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        if tmp.exists():
            os.replace(tmp, final)


def _load(path: Path, render: str = "D1", ir_dir=None):
    """(rgb uint8 HxWx3, None) of an ordinary image (no WCS); FITS files are refused (ValueError)."""
    if is_fits(path):
        raise ValueError(f"{path}: FITS images go through gluon_rcnn.radio.survey.predict_fits")
    from ..data.image_io import read_image  # raises DatasetError (a ValueError) naming the file
    return read_image(path), None


def predict_files(model, files, output_dir, score_thresh: float | None = None, device="cpu", progress: bool = True,
                  skip_bad_images: bool = False, skipped: list | None = None,
                  csv_name: str = "catalogue.csv") -> Path:
    """Detect on each image; write ``output_dir/<csv_name>`` and ``output_dir/<stem>.png``
    (detections scoring >= ``score_thresh``; default the model config's TEST.RESULT_SCORE_THRESH_VIS).

    A file that cannot be decoded (truncated, corrupt, empty, unsupported) raises an error naming
    it, and nothing is written (the PNGs go to temporary names and are moved into place with the CSV
    once every file has been read: :func:`staged_outputs`; an earlier run's files stay); with ``skip_bad_images`` it is logged, left out, and its message
    appended to ``skipped``, and the count is logged at the end. FITS files are refused (ValueError
    naming them): they go through :func:`gluon_rcnn.radio.survey.predict_fits`."""
    import torch
    from tqdm import tqdm

    from ..viz import draw_detections, save_png, vis_score_thresh

    fits_files = [str(f) for f in files if is_fits(f)]
    if fits_files:
        raise ValueError(f"FITS input {fits_files[0]}: FITS images go through gluon_rcnn.radio.survey.predict_fits "
                         "(the radio extra), not the image path")

    if score_thresh is None:
        score_thresh = vis_score_thresh(model)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / csv_name
    bad = skipped if skipped is not None else []
    with staged_outputs() as stage, atomic_write(csv_path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "score", "x1", "y1", "x2", "y2"])
        for path in tqdm(files, desc="predict", disable=not progress):
            try:
                rgb, _ = _load(path)
            except (ValueError, OSError) as e:  # DatasetError is a ValueError naming the file
                if not skip_bad_images:
                    raise
                logger.warning("skipping a bad input: %s", e)
                bad.append(f"{path}: {e}" if str(path) not in str(e) else str(e))
                continue
            with torch.inference_mode():
                det = model([torch.from_numpy(rgb).permute(2, 0, 1)])[0]  # uint8: the model moves it
            keep = det["scores"] >= score_thresh
            boxes = det["boxes"][keep].float().cpu().numpy()
            scores = det["scores"][keep].float().cpu().numpy()
            labels = det["labels"][keep].cpu().numpy()
            # model boxes are continuous pixels (pixel i spans [i, i+1)); astropy's 0-based grid
            # centres pixel i on i: shift by half a pixel
            grid = boxes - 0.5
            for b, s, l in zip(grid, scores, labels):
                w.writerow([path.name, model.classes[int(l) - 1], f"{s:.4f}", *(f"{v:.4f}" for v in b)])
            save_png(stage(out / (output_stem(path) + ".png")),
                     draw_detections(rgb, boxes, scores, labels, model.classes, thresh=score_thresh, thickness=1))
    if bad:
        logger.warning("%d of %d input file(s) were bad and skipped", len(bad), len(files))
    return csv_path
