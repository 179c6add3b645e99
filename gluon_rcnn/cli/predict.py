"""The ``scripts/predict.py`` command line: detect radio sources in FITS images (a source catalogue
as CSV, FITS table, VOTable and DS9 regions, see ``gluon_rcnn.radio.catalogue``) and objects in
ordinary images (a detections CSV); one PNG per image (per FITS file that fits in one tile).

FITS files of any size (``.fits``, ``.fits.gz``, tile-compressed ``.fz``) are tiled at the model's
pixel scale (``--tile``, ``--overlap``, ``--pixel-scale``) and their detections merged across tile
borders (``gluon_rcnn.radio.survey``; needs the ``radio`` extra). Pixel values are read in the file's
BUNIT (Jy/beam, mJy/beam, ...); positions are ICRS whatever the file's frame; fluxes are mJy. Outputs in ``--output``: ``catalogue.csv/.fits/.vot/.reg`` for FITS
inputs (``--format`` picks), ``catalogue.csv`` for images (``image_detections.csv`` when FITS files
are given too).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..engine.predict import collect_inputs, output_stem, predict_files, split_inputs, staged_outputs
from .optimize import add_optimize_args, apply_optimize, check_optimize_args

__all__ = ["main"]

FORMAT_CHOICES = ("csv", "fits", "votable", "ds9")


def _weights_provenance(model_name: str, weights):
    """(weights label, path to hash or None, known sha256 or None)."""
    if weights is None:
        return "random", None, None
    if weights is True:
        from ..model_zoo import get_entry
        w = get_entry(model_name).get("weights") or {}
        return f"pretrained {w.get('url', '')}", None, w.get("sha256")
    return str(weights), str(weights), None


def _predict_fits(a, model, files, device, weights, skipped, stage) -> tuple[list, int]:
    from ..radio.survey import ModelDetector, predict_fits, provenance, scale_defaults, write_results
    from ..viz import draw_detections, save_png

    det = ModelDetector(model, device=device, score_thresh=a.score_thresh)
    # the model's own training scale (RADIO.*) unless given: ClaRAN's 132 px tiles of 1.36"/pixel, 5.4" beam
    a.tile, a.overlap, a.pixel_scale, a.model_beam = scale_defaults(det, a.tile, a.overlap, a.pixel_scale,
                                                                    a.model_beam)
    if not 0 <= a.overlap < a.tile:
        raise ValueError(f"need 0 <= --overlap < --tile, got tile {a.tile}, overlap {a.overlap}")
    label, wpath, wsha = _weights_provenance(a.model, weights)
    meta = provenance(model_name=a.model, weights=wpath, score_thresh=det.score_thresh, tile=a.tile,
                      overlap=a.overlap, survey=a.survey, pixel_scale=a.pixel_scale, render=a.render,
                      sigma_level=a.sigma_level, min_pixels=a.min_pixels, name_prefix=a.name_prefix)
    meta["WEIGHTS"] = label
    if wsha:
        meta["WSHA256"] = wsha
    out = a.output
    Path(out).mkdir(parents=True, exist_ok=True)
    pngs = [0]

    def on_file(r):
        if r.error:
            print(f"skipping a bad input: {r.error}", file=sys.stderr)
            skipped.append(r.error)
            return
        if r.preview is not None:
            import numpy as np
            boxes = np.array([r_["_box"] for r_ in r.rows], dtype=np.float64).reshape(-1, 4)
            scores = np.array([r_["score"] for r_ in r.rows])
            labels = np.array([r_["_label"] for r_ in r.rows], dtype=int)
            save_png(stage(f"{out}/{output_stem(r.path)}.png"), draw_detections(r.preview, boxes, scores, labels, det.classes,
                                                                 thresh=det.score_thresh, thickness=1))
            pngs[0] += 1

    stream = predict_fits(det, files, tile=a.tile, overlap=a.overlap, batch_size=a.batch_size, render=a.render,
                          ir_dir=a.ir_dir, survey=a.survey, pixel_scale=a.pixel_scale, sigma_level=a.sigma_level,
                          min_pixels=a.min_pixels, name_prefix=a.name_prefix, skip_bad=a.skip_bad_images,
                          model_beam=a.model_beam or 0, contours=a.contours)
    paths, _ = write_results(stream, f"{out}/catalogue", det.classes, meta, formats=a.format or FORMAT_CHOICES,
                             components=a.components, on_file=on_file)
    return paths, pngs[0]


def main(argv=None) -> int:
    from .weights import WEIGHTS_HELP, add_weights_args, resolve_weights
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__, epilog=WEIGHTS_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo entry (e.g. faster_rcnn_fpn_resnet50_v1b_rgz)")
    add_weights_args(p)
    p.add_argument("--input", nargs="+", required=True, help="FITS/image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="folder for the catalogue(s) and the PNGs")
    p.add_argument("--render", default="D1", choices=["D1", "D3", "D4"], help="how FITS inputs are rendered")
    p.add_argument("--ir-dir", help="infrared FITS folder (D3/D4)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="lowest score written to the CSV and drawn (default: the model config's "
                        "TEST.RESULT_SCORE_THRESH_VIS, 0.5 unless the checkpoint or --config says otherwise)")
    p.add_argument("--device", default=None)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out files that cannot be decoded (each is reported, and the count at the end) "
                        "instead of stopping with an error naming the file")
    fits = p.add_argument_group("FITS inputs (survey images, gluon_rcnn.radio)")
    fits.add_argument("--tile", type=int, default=None,
                      help="tile side, pixels of the model's scale (default: the model's RADIO.TILE, e.g. ClaRAN's "
                           "132; 300 when it records none)")
    fits.add_argument("--overlap", type=int, default=None,
                      help="tile overlap, pixels (default 96, at most half the tile); sources up to overlap - 4 "
                           "pixels are never cut")
    fits.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    fits.add_argument("--survey", default="FIRST",
                      help="the input survey's pixel scale and beam where headers lack them (FIRST, NVSS, VLASS, LoTSS)")
    fits.add_argument("--pixel-scale", type=float, default=None,
                      help="the model's pixel scale, arcsec/pixel (default: the model's RADIO.PIXEL_SCALE, else the "
                           "survey's); other inputs are regridded")
    fits.add_argument("--model-beam", type=float, default=None,
                      help="the model's resolution, beam FWHM arcsec (default: its RADIO.BEAM): sharper inputs are "
                           "convolved to it, coarser ones refused; 0: no resolution matching")
    fits.add_argument("--contours", default="claran", choices=["claran", "rgz"],
                      help="D3/D4 contour ladder: ClaRAN's 5 sigma x 2**k (default) or RGZ's 3*sqrt(3) sigma x sqrt(3)**k")
    fits.add_argument("--format", nargs="+", choices=FORMAT_CHOICES, default=None,
                      help="catalogue formats (default: all of csv fits votable ds9)")
    fits.add_argument("--components", action="store_true",
                      help="also write per-component tables (catalogue_components.*)")
    fits.add_argument("--sigma-level", type=float, default=3 * 3 ** 0.5,
                      help="island threshold, x local rms (default RGZ's lowest contour, 3*sqrt(3) = 5.2)")
    fits.add_argument("--min-pixels", type=int, default=5, help="smallest island, pixels (default 5)")
    fits.add_argument("--name-prefix", default="", metavar="PREFIX",
                      help="survey prefix of the IAU-style source names, e.g. FIRST gives 'FIRST J104152.8-005241' "
                           "(a space is added after a prefix that does not end in one; default: none, 'J104152.8-005241')")
    add_optimize_args(p)
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    if a.name_prefix and not a.name_prefix.endswith(" "):
        a.name_prefix += " "
    check_optimize_args(p, a)
    weights = resolve_weights(p, a, a.model)
    if (a.tile is not None and a.tile <= 0) or (a.overlap is not None and a.overlap < 0) or \
            (a.tile is not None and a.overlap is not None and a.overlap >= a.tile):
        p.error(f"need --tile > 0 and 0 <= --overlap < --tile, got {a.tile}, {a.overlap}")
    import torch

    from .. import get_model
    from ..model_zoo import RandomWeightsWarning
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    skipped: list[str] = []
    written = []
    try:
        files = collect_inputs(a.input)
        fits_files, images = split_inputs(files)
        with warnings.catch_warnings():
            if weights is None:  # --random-weights: resolve_weights has said it once already
                warnings.simplefilter("ignore", RandomWeightsWarning)
            model = get_model(a.model, pretrained=weights, overrides=a.config, device=device)
        model = apply_optimize(model, a)
        n_png = 0
        if fits_files:
            try:
                import gluon_rcnn.radio  # noqa: F401  (the radio extra: says what to install)
            except ImportError as e:
                print(f"error: FITS input {fits_files[0]}: {e}", file=sys.stderr)
                return 2
            with staged_outputs() as stage:  # the PNGs move into place with the catalogue, or not at all
                paths, n = _predict_fits(a, model, fits_files, device, weights, skipped, stage)
            written += paths
            n_png += n
        if images:
            bad: list[str] = []
            written.append(predict_files(model, images, a.output, a.score_thresh, device,
                                         skip_bad_images=a.skip_bad_images, skipped=bad,
                                         csv_name="image_detections.csv" if fits_files else "catalogue.csv"))
            skipped += bad
            n_png += len(images) - len(bad)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(map(str, written))} and {n_png} PNG(s) to {a.output}")
    if skipped:
        print(f"skipped {len(skipped)} bad input file(s):")
        for msg in skipped:
            print(f"  {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
