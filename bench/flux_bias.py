#!/usr/bin/env python
"""Flux bias of the catalogue's measurements on injected sources (issue 21, deliverable 4).

Point sources and extended Gaussians (intrinsic FWHM ``--ext`` arcsec, convolved with the beam) are
injected one at a time on noise of FIRST's rms (0.15 mJy/beam) correlated over FIRST's beam (5.4" at
1.8"/px: white noise smoothed so that its autocorrelation is the beam), at peak S/N 5 to 1000 and
random sub-pixel positions. Each is measured as the survey catalogue measures it
(:func:`gluon_rcnn.radio.catalogue.measure_source`: islands above 3*sqrt(3) x rms, at least 5 px,
then per-island Gaussian fits, :mod:`gluon_rcnn.radio.fitting`), and the table gives per S/N:
the fraction detected (an island whose brightest pixel lies within 3 px of the injected
position), the median and the robust scatter (MAD x 1.4826) of island_flux / injected and
int_flux / injected, the median |pull| of the fitted flux (``(int_flux - injected) / e_int_flux``; 0.674
for a Gaussian with correct errors), the robust scatter of the position pulls (1 for correct
errors), and the fraction flagged resolved.

    python bench/flux_bias.py --trials 100            # the table in docs/claran.md ("Fluxes")
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_rcnn.radio.catalogue import measure_source  # noqa: E402
from gluon_rcnn.radio.fitting import FWHM, beam_from_header  # noqa: E402

RMS = 1.5e-4         # FIRST, Jy/beam
BEAM = 5.4           # arcsec
PIX = 1.8            # arcsec / px
SIZE = 64            # px: the stamp each source is injected in


def correlated_noise(rng, shape, rms, beam_sigma_px):
    """Gaussian noise of ``rms`` whose autocorrelation is a Gaussian of ``beam_sigma_px`` (the beam)."""
    n = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), beam_sigma_px / math.sqrt(2.0), mode="wrap")
    return n * (rms / n.std())


def inject(rng, snr, ext_arcsec, beam):
    """One stamp: (image, x0, y0, injected integrated flux in Jy)."""
    sb = beam.maj / FWHM
    s = math.hypot(sb, ext_arcsec / PIX / FWHM)
    peak = snr * RMS
    x0, y0 = SIZE / 2 + rng.uniform(-0.5, 0.5), SIZE / 2 + rng.uniform(-0.5, 0.5)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = correlated_noise(rng, (SIZE, SIZE), RMS, sb) + peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    flux = peak * 2 * math.pi * s * s / beam.area  # Jy: the Gaussian's integral over the beam area
    return img.astype(np.float32), x0, y0, flux


def robust(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan")
    med = float(np.median(x))
    return med, float(1.4826 * np.median(np.abs(x - med)))


def run(snrs, exts, trials, seed):
    beam = beam_from_header(BEAM, BEAM, PIX)
    rng = np.random.default_rng(seed)
    rows = []
    for ext in exts:
        for snr in snrs:
            isl, fit, pull, px, py, res, found = [], [], [], [], [], [], 0
            for _ in range(trials):
                img, x0, y0, flux = inject(rng, snr, ext, beam)
                c = SIZE // 2
                m = measure_source(img, (0, 0), (c - 12, c - 12, c + 12, c + 12), RMS, beam=beam)
                comps = [k for k in m.components if math.hypot(k["x_cen"] - x0, k["y_cen"] - y0) < 3]
                if not comps:
                    continue
                found += 1
                k = comps[0]
                isl.append(k["flux"] / beam.area / flux)
                f = k["fit"]
                if f.ok:
                    fit.append(f.flux / beam.area / flux)
                    pull.append((f.flux / beam.area - flux) / (f.e_flux / beam.area))
                    px.append((f.x - x0) / f.e_x)
                    py.append((f.y - y0) / f.e_y)
                    res.append(f.resolved)
            rows.append({"ext": ext, "snr": snr, "found": found / trials, "isl": robust(isl), "fit": robust(fit),
                         "pull": float(np.median(np.abs(pull))) if pull else float("nan"),
                         "px": robust(px)[1], "py": robust(py)[1],
                         "resolved": float(np.mean(res)) if res else float("nan"),
                         "n_fit": len(fit)})
    return rows


def table(rows) -> str:
    out = ["| source | peak S/N | detected | island_flux / true (median, scatter) | int_flux / true (median, "
           "scatter) | median abs flux pull | position pull scatter x, y | resolved |",
           "|---|---:|---:|---|---|---:|---|---:|"]
    for r in rows:
        src = "point" if r["ext"] == 0 else f'{r["ext"]:g}" FWHM'
        out.append(f'| {src} | {r["snr"]:g} | {r["found"]:.2f} | {r["isl"][0]:.3f}, {r["isl"][1]:.3f} | '
                   f'{r["fit"][0]:.3f}, {r["fit"][1]:.3f} | {r["pull"]:.2f} | {r["px"]:.2f}, {r["py"]:.2f} | '
                   f'{r["resolved"]:.2f} |')
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--snr", type=float, nargs="+", default=[5, 7, 10, 20, 50, 100, 1000])
    ap.add_argument("--ext", type=float, nargs="+", default=[0.0, 10.8], help="intrinsic FWHM, arcsec (0: point)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t = time.time()
    rows = run(a.snr, a.ext, a.trials, a.seed)
    print(f"{a.trials} trials per row, rms {RMS * 1e3:g} mJy/beam, beam {BEAM}\", {PIX}\"/px, seed {a.seed} "
          f"({time.time() - t:.0f} s)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
