"""COCO datasets of radio images: rendering, labels, splits; the embedded demo dataset."""
from __future__ import annotations

import json
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..structures.categories import RGZ_CLASSES
from .fits import FITSError, read_fits
from .labels import Labelling, RadioSource, derive_sources
from .render import render_d1, render_d3, render_d4, reproject_to

COCO_CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "radio source"} for i, n in enumerate(RGZ_CLASSES)]


def _source_annotation(src: RadioSource, scale: float = 1.0) -> dict:
    x1, y1, x2, y2 = (v * scale for v in src.box)
    return {
        "category_id": src.category_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": float(src.area * scale * scale),
        "segmentation": [[round(float(v) * scale, 3) for v in p] for p in src.polygons],
        "iscrowd": 0,
        "n_components": src.n_components,
        "n_peaks": src.n_peaks,
        "peaks": [[(px + 0.5) * scale, (py + 0.5) * scale] for c in src.components for px, py in c.peaks],
    }


def _skip_record(src: RadioSource, file_name: str, scale: float = 1.0) -> dict:
    return {"file": file_name, "class": src.class_name, "box": [v * scale for v in src.box], "reason": src.reason}


def _split_indices(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean (n,): True for test images. Deterministic in ``seed``; when 0 < fraction < 1 and
    n >= 2, both splits get at least one image."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if 0 < test_fraction < 1 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return is_test


def write_coco(out_dir, records: list[dict], is_test: np.ndarray, extra_info: dict | None = None) -> dict:
    """Write ``annotations/instances_{train,test}.json`` from per-image records.

    A record is ``{"image": {file_name, width, height, ...}, "annotations": [ann, ...],
    "skipped": [...]}`` (images already written under ``out_dir/images``). Image ids are 1..N in
    record order, annotation ids 1..M. Returns the summary: counts per class for train, test and
    total, image counts, and the skipped sources.
    """
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    summary = {"train": Counter(), "test": Counter(), "total": Counter(),
               "images": {"train": 0, "test": 0}, "skipped": []}
    splits = {"train": {"images": [], "annotations": []}, "test": {"images": [], "annotations": []}}
    ann_id = 0
    for img_id, (rec, test) in enumerate(zip(records, is_test), start=1):
        split = "test" if test else "train"
        img = dict(rec["image"], id=img_id)
        splits[split]["images"].append(img)
        summary["images"][split] += 1
        for ann in rec["annotations"]:
            ann_id += 1
            splits[split]["annotations"].append(dict(ann, id=ann_id, image_id=img_id))
            name = RGZ_CLASSES[ann["category_id"] - 1]
            summary[split][name] += 1
            summary["total"][name] += 1
        summary["skipped"].extend(dict(s, split=split) for s in rec.get("skipped", []))
    info = {"description": "Radio sources labelled by gluon_rcnn.radio (ClaRAN classes)", **(extra_info or {})}
    for split, d in splits.items():
        coco = {"info": info, "images": d["images"], "annotations": d["annotations"], "categories": COCO_CATEGORIES}
        tmp = out_dir / "annotations" / f"instances_{split}.json.tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, out_dir / "annotations" / f"instances_{split}.json")
    for k in ("train", "test", "total"):
        summary[k] = {c: int(summary[k][c]) for c in RGZ_CLASSES}
    return summary


def _find_ir(ir_dir: Path, stem: str) -> Path | None:
    for ext in (".fits", ".fits.gz", ".fit", ".fts"):
        p = ir_dir / (stem + ext)
        if p.exists():
            return p
    return None


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def build_coco_dataset(fits_paths: Iterable, out_dir, render: str = "D1", ir_dir=None,
                       test_fraction: float = 0.2, seed: int = 0, sigma_level: float = 4.0,
                       contour_factor: float = 2.0, min_pixels: int = 5, link_factor: float = 1.5,
                       link_max: float = 60.0, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Label FITS radio images and write a COCO dataset under ``out_dir``.

    Writes ``images/<stem>.png`` (the rendering, same size as the FITS), and
    ``annotations/instances_train.json`` / ``instances_test.json``: categories are
    :data:`RGZ_CLASSES` with ids 1..6; one annotation per kept source (bbox xywh, segmentation = its
    components' polygons, area = pixel count, iscrowd 0, plus n_components/n_peaks/peaks); images
    carry ``fits_path``, ``noise``, ``threshold``, ``n_blank`` and the ``skipped`` sources.

    render: 'D1' (radio only), 'D3' (contours on infrared) or 'D4' (D3, infrared masked outside the
        sources' hulls); D3/D4 read ``ir_dir/<fits stem>.fits`` and reproject it to the radio grid.
    test_fraction, seed: the images (sorted by path) are split at random, deterministically.
    progress: called as ``progress(i, n, path)`` after each file.

    Returns the summary of :func:`write_coco` plus ``failed``: files that could not be read, with
    the error.
    """
    render = render.upper()
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    if render != "D1" and ir_dir is None:
        raise ValueError(f"render={render} draws radio contours over infrared: pass ir_dir")
    paths = sorted({str(Path(p)) for p in fits_paths})
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records, failed, used_names = [], [], set()
    for i, p in enumerate(paths):
        try:
            rec = _fits_record(Path(p), out_dir, render, ir_dir, used_names, sigma_level=sigma_level,
                               contour_factor=contour_factor, min_pixels=min_pixels,
                               link_factor=link_factor, link_max=link_max)
            records.append(rec)
        except (FITSError, FileNotFoundError) as e:
            failed.append({"file": p, "error": str(e)})
        if progress is not None:
            progress(i + 1, len(paths), p)
    summary = write_coco(out_dir, records, _split_indices(len(records), test_fraction, seed),
                         extra_info={"render": render, "sigma_level": sigma_level,
                                     "contour_factor": contour_factor, "min_pixels": min_pixels,
                                     "link_factor": link_factor, "link_max": link_max, "seed": seed})
    summary["failed"] = failed
    return summary


def render_fits(path, render: str = "D1", ir_dir=None, **kw):
    """Read a radio FITS, derive its sources and render it as the network sees it.

    Returns ``(rgb uint8 (H, W, 3) on the FITS pixel grid, wcs, labelling)``. ``render`` is
    'D1' (radio only), 'D3' or 'D4' (both need ``ir_dir`` holding an infrared FITS of the same
    stem, reprojected onto the radio grid). ``kw`` goes to :func:`derive_sources`.
    """
    path = Path(path)
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    radio, wcs, _ = read_fits(path)
    lab = derive_sources(radio, **kw)
    if render == "D1":
        return render_d1(radio, noise=lab.noise), wcs, lab
    if ir_dir is None:
        raise ValueError(f"render {render} needs an infrared image folder (ir_dir)")
    ir_path = _find_ir(Path(ir_dir), path.stem)
    if ir_path is None:
        raise FileNotFoundError(f"{path}: no infrared image {path.stem}.fits in {ir_dir}")
    ir, ir_wcs, _ = read_fits(ir_path)
    ir = reproject_to(ir, ir_wcs, wcs, radio.shape)
    if render == "D3":
        return render_d3(radio, ir, levels=lab.levels), wcs, lab
    # every source's own hull (skipped ones too: the rendering sees all radio emission)
    return render_d4(radio, ir, [s.masks for s in lab.sources + lab.skipped], levels=lab.levels), wcs, lab


def _fits_record(path: Path, out_dir: Path, render: str, ir_dir, used_names: set, **kw) -> dict:
    rgb, wcs, lab = render_fits(path, render, ir_dir, **kw)
    radio_shape = rgb.shape[:2]
    name = path.stem + ".png"
    k = 1
    while name in used_names:
        name = f"{path.stem}_{k}.png"
        k += 1
    used_names.add(name)
    _write_png(out_dir / "images" / name, rgb)
    image = {"file_name": name, "width": int(radio_shape[1]), "height": int(radio_shape[0]),
             "fits_path": str(path.resolve()), "noise": lab.noise, "threshold": lab.threshold,
             "n_blank": lab.n_blank}
    skipped = [_skip_record(s, name) for s in lab.skipped]
    image["skipped"] = skipped
    return {"image": image, "annotations": [_source_annotation(s) for s in lab.sources], "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# embedded demo data: real FIRST cutouts shipped inside the firstgalaxydata wheel
# ---------------------------------------------------------------------------------------------

DEMO_MORPHOLOGIES = ("FRI", "FRII", "Bent", "Compact")


def _firstgalaxydata_zip() -> Path:
    """``galaxy_data.zip`` inside the installed ``firstgalaxydata`` package (found without
    importing it: its loader would try to download)."""
    import importlib.util

    spec = importlib.util.find_spec("firstgalaxydata")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo dataset needs the PyPI package firstgalaxydata (pip install firstgalaxydata)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "galaxy_data.zip"
        if p.exists():
            return p
    raise FileNotFoundError(f"firstgalaxydata is installed at {list(spec.submodule_search_locations)} "
                            "but holds no galaxy_data.zip")


def build_demo_dataset(out_dir, n_images: int = 200, size: int = 150, seed: int = 0,
                       test_fraction: float = 0.2, sigma_level: float = 4.0, contour_factor: float = 2.0,
                       min_pixels: int = 10, link_factor: float = 1.5, link_max: float = 60.0) -> dict:
    """The demo COCO dataset from the real FIRST cutouts packaged in ``firstgalaxydata``.

    The wheel ships 2,158 distinct 300x300 uint8 PNGs (``galaxy_data/{train,valid,test}/<class>/``,
    classes FRI, FRII, Bent, Compact; their background is already clipped at the catalogue's noise
    level). ``n_images`` of them are drawn, a quarter from each morphology, at random with ``seed``,
    skipping cutouts where no source of the six ClaRAN classes is found. Each is labelled by
    :func:`derive_sources` on its full-resolution PNG intensities (the noise is MAD-based; with the
    clipped background it is 0, so the lowest contour is the data's own clip, about 3 sigma rather
    than ClaRAN's 4; ``min_pixels`` defaults to 10, about one FIRST beam at 1.8"/pixel, to drop the
    noise islands that this lower contour lets through), rendered by
    :func:`render_d1`, and the image, boxes and polygons are scaled to ``size`` x ``size``
    (INTER_AREA). Same layout as :func:`build_coco_dataset`; images carry ``source`` (the member of
    the zip) and ``morphology``. Returns the summary of :func:`write_coco`.
    """
    zpath = _firstgalaxydata_zip()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zpath) as zf:
        members = sorted(m for m in zf.namelist() if m.endswith(".png") and m.split("/")[1] in ("train", "valid", "test"))
        by_class = {c: [m for m in members if m.split("/")[2] == c] for c in DEMO_MORPHOLOGIES}
        quota = {c: n_images // len(DEMO_MORPHOLOGIES) + (i < n_images % len(DEMO_MORPHOLOGIES))
                 for i, c in enumerate(DEMO_MORPHOLOGIES)}
        chosen: list[tuple[str, str, Labelling, np.ndarray]] = []
        for c in DEMO_MORPHOLOGIES:
            order = rng.permutation(len(by_class[c]))
            got = 0
            for j in order:
                if got >= quota[c]:
                    break
                m = by_class[c][j]
                img = cv2.imdecode(np.frombuffer(zf.read(m), np.uint8), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    continue
                lab = derive_sources(img.astype(np.float32), sigma_level=sigma_level, contour_factor=contour_factor,
                                     min_pixels=min_pixels, link_factor=link_factor, link_max=link_max)
                if not lab.sources:
                    continue
                chosen.append((m, c, lab, img))
                got += 1
    records = []
    for m, c, lab, img in chosen:
        h, w = img.shape
        scale = size / max(h, w)
        rgb = render_d1(img.astype(np.float32), noise=lab.noise)
        if scale != 1.0:
            rgb = cv2.resize(rgb, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
        name = f"{c}_{Path(m).stem}.png"
        _write_png(out_dir / "images" / name, rgb)
        skipped = [_skip_record(s, name, scale) for s in lab.skipped]
        records.append({
            "image": {"file_name": name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                      "source": f"firstgalaxydata:{m}", "morphology": c, "scale": scale,
                      "threshold": lab.threshold, "skipped": skipped},
            "annotations": [_source_annotation(s, scale) for s in lab.sources],
            "skipped": skipped,
        })
    return write_coco(out_dir, records, _split_indices(len(records), test_fraction, seed),
                      extra_info={"source": "firstgalaxydata galaxy_data.zip (FIRST cutouts)", "size": size,
                                  "seed": seed, "n_images": n_images})
