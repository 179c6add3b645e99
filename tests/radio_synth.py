"""Synthetic FIRST-like radio images for the radio tests (no real data needed): noise plus Gaussian
sources on a FIRST-like TAN grid (1.8"/px, 5.4" beam, Jy/beam), and copies of an image header in
another sky frame that describe the same pixels (same sky), for frame tests."""
import numpy as np

FIRST_PIX_DEG = 1.8 / 3600
FIRST_BEAM_ARCSEC = 5.4
NOISE_JY = 1.5e-4  # FIRST's typical rms, 0.15 mJy/beam


def first_like_header(shape=(300, 300), crval=(150.47, -0.878)):
    """A FITS header like a FIRST cutout's: RA---TAN/DEC--TAN, FK5 J2000, 1.8"/px, BUNIT JY/BEAM."""
    from astropy.io import fits

    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, shape[1], shape[0]
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = shape[1] / 2 + 0.5, shape[0] / 2 + 0.5
    h["CDELT1"], h["CDELT2"] = -FIRST_PIX_DEG, FIRST_PIX_DEG
    h["RADESYS"], h["EQUINOX"] = "FK5", 2000.0
    h["BUNIT"] = "JY/BEAM"
    return h


def gaussian_sources(shape=(300, 300), seed=0):
    """(image in Jy/beam, list of (x, y, peak Jy/beam, fwhm_x px, fwhm_y px)): FIRST noise and a mix of
    point sources (beam-sized Gaussians, 3 px FWHM) and extended doubles, well inside the image."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, NOISE_JY, shape)
    beam_px = FIRST_BEAM_ARCSEC / 1.8
    srcs = [(60, 70, 0.030, beam_px, beam_px), (220, 60, 0.005, beam_px, beam_px),
            (150, 150, 0.012, 2.5 * beam_px, 1.5 * beam_px), (80, 220, 0.050, beam_px, beam_px),
            (92, 226, 0.020, beam_px, beam_px),  # a close pair: one double source
            (230, 230, 0.002 * 5, 2.0 * beam_px, 2.0 * beam_px)]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    k = 1.0 / (8 * np.log(2))
    for x, y, a, fx, fy in srcs:
        img += a * np.exp(-((xx - x) ** 2 / (fx ** 2) + (yy - y) ** 2 / (fy ** 2)) / (2 * k) * 1.0)
    return img.astype(np.float32), srcs


def reframe_header(header, frame):
    """A copy of a zenithal (e.g. TAN) celestial header whose world coordinates are in ``frame``
    (``'galactic'``, or an astropy frame such as ``FK4(equinox='B1950')``) and whose pixels map to the
    same sky: the reference point is transformed to the new frame and LONPOLE set to the native
    longitude of the new frame's north pole (wcslib's ``s2p`` of a point north of the reference), which rotates the
    projection about the reference point. Exact where the frame change is a rotation (FK5 <->
    Galactic, FK5 <-> ICRS); FK4's E-terms are not a rotation: measure the residual (tests do)."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS
    from astropy.wcs.utils import wcs_to_celestial_frame

    w = WCS(header)
    old = wcs_to_celestial_frame(w)
    ref = SkyCoord(w.wcs.crval[0], w.wcs.crval[1], unit="deg", frame=old).transform_to(frame)
    # the reference point is the native pole: the meridian from it towards the new frame's pole is
    # the native meridian phi = LONPOLE (a point 36" north of it lies on it; the pole itself may lie
    # beyond TAN's hemisphere)
    north = SkyCoord(ref.spherical.lon.deg, ref.spherical.lat.deg + 0.01, unit="deg",
                     frame=ref.frame.replicate_without_data()).transform_to(old)
    phi = float(w.wcs.s2p([[north.spherical.lon.deg, north.spherical.lat.deg]], 0)["phi"][0])
    h = header.copy()
    proj = w.wcs.ctype[0][-3:]
    lon, lat = ref.spherical.lon.deg, ref.spherical.lat.deg
    if ref.frame.name == "galactic":
        h["CTYPE1"], h["CTYPE2"] = f"GLON-{proj}", f"GLAT-{proj}"
        for k in ("RADESYS", "EQUINOX"):
            h.remove(k, ignore_missing=True)
    else:
        h["CTYPE1"], h["CTYPE2"] = f"RA---{proj}", f"DEC--{proj}"
        h["RADESYS"] = ref.frame.name.upper()
        if ref.frame.name in ("fk4", "fk5"):
            eq = ref.frame.equinox
            h["EQUINOX"] = float(eq.byear if ref.frame.name == "fk4" else eq.jyear)
    h["CRVAL1"], h["CRVAL2"] = lon, lat
    h["LONPOLE"] = phi
    return h


def max_sky_difference_arcsec(h1, h2, shape):
    """The largest separation (arcsec) between the ICRS positions two headers give the pixels of a
    grid (corners, edges' midpoints, centre)."""
    from astropy.wcs import WCS

    H, W = shape
    xs = np.array([0, W - 1, 0, W - 1, (W - 1) / 2, 0, W - 1, (W - 1) / 2, (W - 1) / 2])
    ys = np.array([0, 0, H - 1, H - 1, (H - 1) / 2, (H - 1) / 2, (H - 1) / 2, 0, H - 1])
    a, b = WCS(h1).pixel_to_world(xs, ys).icrs, WCS(h2).pixel_to_world(xs, ys).icrs
    return float(a.separation(b).arcsec.max())
