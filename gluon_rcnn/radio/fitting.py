"""Gaussian fits of radio components: integrated and peak flux with errors, positions with errors,
sizes and beam-deconvolved sizes, as PyBDSF reports them (Mohan & Rafferty 2015).

* **Fit** (:func:`fit_island`): one elliptical 2-D Gaussian per counted peak of an island
  (at most ``max_gauss``, brightest first), fitted together by least squares
  (``astropy.modeling``'s :class:`~astropy.modeling.models.Gaussian2D` and ``TRFLSQFitter``) to the
  island's pixels and those within one beam FWHM of it, other islands' pixels left out. Starting
  values: the peaks' values and positions, the beam's shape.
* **Errors** (:func:`condon_errors`): Condon (1997, PASP 109, 166) eqs. 21, 41-42, the formulas
  PyBDSF uses (``functions.get_errors``), from the local rms and the beam as the noise's correlation
  length; not from the fit's covariance matrix, which ignores the noise's correlation across the
  beam. No calibration error is added.
* **Aggregates** (:func:`summarize`): a component (or source) of several Gaussians gets the sum of
  their integrated fluxes (errors in quadrature), the model's peak, the flux-weighted mean position
  (errors propagated, weights held fixed) and the FWHMs of the model's second moments (exactly the
  Gaussian's for one; size errors only for one Gaussian).
* **Deconvolution** (:func:`deconvolve`): the beam subtracted in quadrature as covariance matrices
  (Wild 1970, Aust. J. Phys. 23, 113: the FWHM ellipses' quadratic forms subtract), a negative
  eigenvalue meaning unresolved along that axis (size 0). ``resolved``: the deconvolved major axis
  is positive and, for one Gaussian, the fitted major axis exceeds the beam's by more than 3 errors.

Pixel conventions: working-grid 0-based pixel centres; ``theta`` (radians) the major axis's angle
from +x towards +y (astropy's Gaussian2D); sizes are FWHMs in pixels. :func:`sky_pa` turns an angle on
the pixel grid into a position angle east of north through the WCS.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM / sigma of a Gaussian

__all__ = ["Beam", "Gaussian", "FitSummary", "fit_island", "condon_errors", "deconvolve", "summarize", "sky_pa",
           "beam_from_header"]


@dataclass(frozen=True)
class Beam:
    """The restoring beam on the pixel grid: FWHMs (pixels) and the major axis's ``theta``."""

    maj: float
    min: float
    theta: float = math.pi / 2  # a north-up image's beam with BPA = 0 lies along +y

    @property
    def area(self) -> float:
        """Beam area in pixels: ``pi maj min / (4 ln 2)``."""
        return math.pi * self.maj * self.min / (4.0 * math.log(2.0))


def beam_from_header(bmaj_arcsec: float, bmin_arcsec: float, pixel_scale: float, bpa_deg: float = 0.0) -> Beam:
    """A :class:`Beam` from FWHMs in arcsec and BPA east of north, for a north-up east-left grid."""
    return Beam(bmaj_arcsec / pixel_scale, bmin_arcsec / pixel_scale, math.radians(bpa_deg + 90.0))


def _cov(maj: float, mn: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    r = np.array([[c, -s], [s, c]])
    return r @ np.diag([maj * maj, mn * mn]) @ r.T


def _axes(cov: np.ndarray) -> tuple[float, float, float]:
    """FWHM-squared covariance -> (maj, min, theta); negative eigenvalues give 0."""
    w, v = np.linalg.eigh(cov)
    theta = math.atan2(v[1, 1], v[0, 1]) % math.pi
    return math.sqrt(max(w[1], 0.0)), math.sqrt(max(w[0], 0.0)), theta


def deconvolve(maj: float, mn: float, theta: float, beam: Beam) -> tuple[float, float, float]:
    """(maj, min, theta) of a Gaussian of FWHMs ``maj``, ``mn`` deconvolved from ``beam`` (Wild 1970):
    ``cov_source = cov_fitted - cov_beam`` in FWHM units; 0 along an unresolved axis."""
    if not all(np.isfinite([maj, mn, theta])):
        return float("nan"), float("nan"), float("nan")
    return _axes(_cov(maj, mn, theta) - _cov(beam.maj, beam.min, beam.theta))


def condon_errors(amp: float, maj: float, mn: float, theta: float, rms: float, beam: Beam) -> dict:
    """1-sigma errors of an elliptical Gaussian (FWHMs ``maj`` >= ``mn`` pixels, peak ``amp``) on
    noise ``rms`` correlated over ``beam`` (Condon 1997, as PyBDSF's ``get_errors``): ``amp``,
    ``maj``, ``min`` (pixels), ``theta`` (radians), ``x``, ``y`` (pixels) and ``flux`` (image units x
    pixels, for ``flux = amp * pi maj min / (4 ln 2)``)."""
    nan = {k: float("nan") for k in ("amp", "maj", "min", "theta", "x", "y", "flux")}
    if not (amp > 0 and maj > 0 and mn > 0 and rms > 0):
        return nan
    b2 = beam.maj * beam.min
    dumr = math.sqrt(maj * mn / (4.0 * b2))
    r1, r2 = 1.0 + b2 / maj ** 2, 1.0 + b2 / mn ** 2
    snr = dumr * amp / rms
    rho = lambda a, b: snr * r1 ** (a / 2) * r2 ** (b / 2)  # noqa: E731  Condon's rho(alpha_M, alpha_m)
    e_amp = amp * math.sqrt(2.0) / rho(1.5, 1.5)
    e_maj = maj * math.sqrt(2.0) / rho(2.5, 0.5)
    e_min = mn * math.sqrt(2.0) / rho(0.5, 2.5)
    d2 = (maj * maj - mn * mn) / (maj * mn)
    e_theta = min(2.0 / (d2 * rho(0.5, 2.5)), math.pi) if d2 > 0 else math.pi
    # errors along the major and minor axes (Condon eq. 21: sigma^2(x0) = sigma^2(maj) / (8 ln 2)),
    # projected on the pixel axes
    c, s = math.cos(theta), math.sin(theta)
    ex = math.hypot(e_maj * c, e_min * s) / math.sqrt(8.0 * math.log(2.0))
    ey = math.hypot(e_maj * s, e_min * c) / math.sqrt(8.0 * math.log(2.0))
    flux = amp * math.pi * maj * mn / (4.0 * math.log(2.0))
    e_flux = flux * math.sqrt((e_amp / amp) ** 2 + (b2 / (maj * mn)) * ((e_maj / maj) ** 2 + (e_min / mn) ** 2))
    return {"amp": e_amp, "maj": e_maj, "min": e_min, "theta": e_theta, "x": ex, "y": ey, "flux": e_flux}


@dataclass
class Gaussian:
    """One fitted Gaussian (pixels, working grid) with its Condon errors."""

    amp: float
    x: float
    y: float
    maj: float      # FWHM, pixels
    min: float
    theta: float    # the major axis from +x towards +y, radians in [0, pi)
    errors: dict

    @property
    def flux(self) -> float:
        """Integrated flux, image units x pixels (divide by the beam area for Jy)."""
        return self.amp * math.pi * self.maj * self.min / (4.0 * math.log(2.0))


def fit_island(values: np.ndarray, mask: np.ndarray, others: np.ndarray, origin: tuple[int, int], peaks,
               peak_values, rms: float, beam: Beam, max_gauss: int = 4) -> list[Gaussian] | None:
    """Gaussians fitted to an island (see the module docstring); None when the fit fails.

    values, mask, others: crops (NaN blanks; the island's pixels; other islands' pixels) whose pixel
    ``(0, 0)`` is working-grid pixel ``origin = (x0, y0)``; peaks: (x, y) on the working grid,
    brightest first, with ``peak_values``; rms: the local noise."""
    from astropy.modeling import fitting, models

    x0, y0 = origin
    grow = max(int(math.ceil(beam.maj)), 1)
    region = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=grow) & ~others & np.isfinite(values)
    yy, xx = np.nonzero(region)
    z = values[yy, xx].astype(np.float64)
    k = max(1, min(len(peaks), max_gauss))
    if len(z) < 6 * k:
        k = max(1, len(z) // 6)
    if len(z) < 6:
        return None
    s0 = beam.maj / FWHM
    ys, xs = np.nonzero(mask)
    lo_x, hi_x, lo_y, hi_y = xs.min() - 0.5, xs.max() + 0.5, ys.min() - 0.5, ys.max() + 0.5
    big = 2.0 * max(hi_x - lo_x, hi_y - lo_y) + s0
    model = None
    for (px, py), pv in list(zip(peaks, peak_values))[:k]:
        g = models.Gaussian2D(amplitude=float(pv), x_mean=float(px - x0), y_mean=float(py - y0), x_stddev=s0,
                              y_stddev=s0, theta=0.0,
                              bounds={"amplitude": (0.0, None), "x_mean": (lo_x, hi_x), "y_mean": (lo_y, hi_y),
                                      "x_stddev": (0.1, big), "y_stddev": (0.1, big)})
        model = g if model is None else model + g
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fitted = fitting.TRFLSQFitter()(model, xx.astype(np.float64), yy.astype(np.float64), z, maxiter=200)
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            return None
    out = []
    for g in (fitted if k > 1 else [fitted]):
        amp, th = float(g.amplitude.value), float(g.theta.value)
        sx, sy = abs(float(g.x_stddev.value)), abs(float(g.y_stddev.value))
        if not all(np.isfinite([amp, sx, sy, th, g.x_mean.value, g.y_mean.value])) or amp <= 0 or sx <= 0 or sy <= 0:
            return None
        if sy > sx:
            sx, sy, th = sy, sx, th + math.pi / 2
        th %= math.pi
        maj, mn = sx * FWHM, sy * FWHM
        out.append(Gaussian(amp, float(g.x_mean.value) + x0, float(g.y_mean.value) + y0, maj, mn, th,
                            condon_errors(amp, maj, mn, th, rms, beam)))
    return out


@dataclass
class FitSummary:
    """A component's (or source's) Gaussians in one: pixels and image units (see :func:`summarize`)."""

    flux: float = float("nan")       # image units x pixels
    e_flux: float = float("nan")
    peak: float = float("nan")       # image units
    e_peak: float = float("nan")
    x: float = float("nan")
    y: float = float("nan")
    e_x: float = float("nan")
    e_y: float = float("nan")
    maj: float = float("nan")        # FWHM, pixels
    min: float = float("nan")
    theta: float = float("nan")
    e_maj: float = float("nan")
    e_min: float = float("nan")
    e_theta: float = float("nan")
    deconv_maj: float = float("nan")
    deconv_min: float = float("nan")
    deconv_theta: float = float("nan")
    resolved: bool = False
    n_gauss: int = 0
    ok: bool = False


def summarize(gaussians: list[Gaussian] | None, beam: Beam) -> FitSummary:
    """Sum of the Gaussians' fluxes, model peak, flux-weighted position and second-moment size; an
    empty summary (``ok`` False, NaNs) for a failed fit."""
    if not gaussians:
        return FitSummary()
    f = np.array([g.flux for g in gaussians])
    w = f / f.sum()
    mu = np.array([[g.x, g.y] for g in gaussians])
    m = w @ mu
    cov = sum(wk * (_cov(g.maj, g.min, g.theta) / (8.0 * math.log(2.0)) + np.outer(p - m, p - m))
              for wk, g, p in zip(w, gaussians, mu))
    maj, mn, theta = _axes(cov * 8.0 * math.log(2.0))
    # the model's peak: the highest of the model at the Gaussians' centres
    def model_at(x, y):
        tot = 0.0
        for g in gaussians:
            d = np.array([x - g.x, y - g.y])
            tot += g.amp * math.exp(-0.5 * d @ np.linalg.solve(_cov(g.maj, g.min, g.theta) / (8.0 * math.log(2.0)), d))
        return tot
    vals = [model_at(g.x, g.y) for g in gaussians]
    top = int(np.argmax(vals))
    e = [g.errors for g in gaussians]
    one = len(gaussians) == 1
    dmaj, dmin, dth = deconvolve(maj, mn, theta, beam)
    e_maj = e[0]["maj"] if one else float("nan")
    # resolved: deconvolvable, and (one Gaussian) the major axis exceeds the beam's by over 3 sigma (the
    # larger of two fitted axes of a point source is biased up by about one sigma: 2 sigma would call
    # 16 % of point sources resolved, 3 sigma 0-3 %, bench/flux_bias.py)
    resolved = bool(dmaj > 0 and (not one or not np.isfinite(e_maj) or maj - beam.maj > 3.0 * e_maj))
    return FitSummary(flux=float(f.sum()), e_flux=float(math.sqrt(sum(x["flux"] ** 2 for x in e))),
                      peak=float(vals[top]), e_peak=float(e[top]["amp"]), x=float(m[0]), y=float(m[1]),
                      e_x=float(math.sqrt(sum((wk * x["x"]) ** 2 for wk, x in zip(w, e)))),
                      e_y=float(math.sqrt(sum((wk * x["y"]) ** 2 for wk, x in zip(w, e)))),
                      maj=maj, min=mn, theta=theta, e_maj=e_maj, e_min=e[0]["min"] if one else float("nan"),
                      e_theta=e[0]["theta"] if one else float("nan"), deconv_maj=dmaj, deconv_min=dmin,
                      deconv_theta=dth, resolved=resolved, n_gauss=len(gaussians), ok=True)


def sky_pa(wcs, x: float, y: float, theta: float) -> float:
    """Position angle (degrees east of north, [0, 180)) of a direction ``theta`` on the pixel grid at
    pixel ``(x, y)``, through the celestial ``wcs`` (central differences of 0.1 px)."""
    if not np.isfinite(theta):
        return float("nan")
    d, c, s = 0.1, math.cos(theta), math.sin(theta)
    ra, de = (np.radians(np.asarray(v, np.float64)) for v in
              wcs.pixel_to_world_values([x, x + d * c, x - d * c], [y, y + d * s, y - d * s]))

    def pa(k):  # from the centre towards point k, east of north
        dra = ra[k] - ra[0]
        return math.atan2(math.sin(dra) * math.cos(de[k]),
                          math.cos(de[0]) * math.sin(de[k]) - math.sin(de[0]) * math.cos(de[k]) * math.cos(dra))

    fwd, back = pa(1), pa(2) + math.pi
    mean = fwd + math.remainder(back - fwd, 2 * math.pi) / 2
    return math.degrees(mean) % 180.0
