"""Radio astronomy (ClaRAN, Wu et al. 2019, MNRAS 482, 1211): FITS in, catalogues out.

Installed by the ``radio`` extra (``pip install gluon_rcnn[radio]``: astropy, reproject, scipy,
firstgalaxydata); the detection library itself imports none of them.

Modules (each usable on its own):

* :mod:`.fits` — FITS images with a celestial WCS, read safely (:func:`read_fits`); the noise of a
  radio image (:func:`estimate_noise`).
* :mod:`.labels` — the rule labeller (RGZ's rule by default: its contour ladder and peak count): components, peaks, sources and classes
  from the radio image alone (:func:`derive_sources`).
* :mod:`.consensus` — human labels: the Radio Galaxy Zoo consensus catalogue ClaRAN was trained on,
  matched to images by sky position.
* :mod:`.render` — ClaRAN's renderings D1, D3, D4.
* :mod:`.dataset` — COCO datasets of radio images; the embedded demo dataset.
* :mod:`.coords` — pixel <-> sky conversions.
* :mod:`.survey` — survey-scale prediction: tiling of large mosaics, merging across tile borders.
* :mod:`.islands` — islands of emission on a tiling-independent noise map: what merging assigns to
  exactly one source each.
* :mod:`.fitting` — Gaussian fits of components: fluxes, positions, sizes with errors (as PyBDSF).
* :mod:`.catalogue` — source catalogues astronomers use (CSV, FITS, VOTable, DS9 regions), every
  column with its unit, UCD and description; positions ICRS.
* :mod:`.api` — for notebooks: :func:`find_sources` (an HDU or array + WCS in, an astropy Table with
  a SkyCoord column out) and :func:`crossmatch` (against any catalogue, with astropy).
"""
from __future__ import annotations

import importlib.util

_DEPENDENCIES = ("astropy", "scipy", "reproject")


def _check_dependencies() -> None:
    missing = [m for m in _DEPENDENCIES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"gluon_rcnn.radio needs {', '.join(missing)}: pip install 'gluon_rcnn[radio]'")


_check_dependencies()

from ..structures.categories import RGZ_CLASSES  # noqa: E402
from .consensus import CatalogueError, ConsensusLabelling, label_image, load_consensus  # noqa: E402
from .api import crossmatch, find_sources  # noqa: E402
from .coords import IcrsWCS, pixel_boxes_to_world, pixel_to_icrs  # noqa: E402
from .dataset import DEMO_MORPHOLOGIES, build_coco_dataset, build_demo_dataset, render_fits, write_coco  # noqa: E402
from .fits import FITSError, FITSUnitWarning, MemoryImage, estimate_noise, jy_per_beam_factor, read_fits  # noqa: E402
from .labels import (Component, Labelling, RadioSource, contour_levels, derive_sources,  # noqa: E402
                     group_components, mask_to_polygons)
from .render import render_d1, render_d3, render_d4, reproject_to, stretch_ir  # noqa: E402

__all__ = [
    "RGZ_CLASSES", "FITSError", "Component", "RadioSource", "Labelling",
    "read_fits", "estimate_noise", "contour_levels", "derive_sources", "group_components",
    "mask_to_polygons", "render_d1", "render_d3", "render_d4", "stretch_ir", "reproject_to",
    "pixel_boxes_to_world", "render_fits", "build_coco_dataset", "build_demo_dataset", "write_coco",
    "DEMO_MORPHOLOGIES", "CatalogueError", "ConsensusLabelling", "label_image", "load_consensus",
    "find_sources", "crossmatch", "IcrsWCS", "pixel_to_icrs", "FITSUnitWarning", "MemoryImage", "jy_per_beam_factor",
]
