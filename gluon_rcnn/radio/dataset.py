"""COCO datasets of radio images: rendering, labels, splits; the embedded demo dataset."""
from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..structures.categories import RGZ_CLASSES
from ..utils.io import atomic_write
from .fits import FITSError, read_fits
from .labels import RGZ_BASE_SIGMA, RGZ_CONTOUR_FACTOR, Labelling, RadioSource, derive_sources
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
               "images": {"train": 0, "test": 0}, "skipped": [], "ignore": {"train": 0, "test": 0}}
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
            if ann.get("iscrowd", 0):  # an ignore region, not a labelled source
                summary["ignore"][split] += 1
                continue
            name = RGZ_CLASSES[ann["category_id"] - 1]
            summary[split][name] += 1
            summary["total"][name] += 1
        summary["skipped"].extend(dict(s, split=split) for s in rec.get("skipped", []))
    info = {"description": "Radio sources labelled by gluon_rcnn.radio (ClaRAN classes)", **(extra_info or {})}
    for split, d in splits.items():
        coco = {"info": info, "images": d["images"], "annotations": d["annotations"], "categories": COCO_CATEGORIES}
        with atomic_write(out_dir / "annotations" / f"instances_{split}.json") as f:
            json.dump(coco, f)
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
                       test_fraction: float = 0.2, seed: int = 0, sigma_level: float = RGZ_BASE_SIGMA,
                       contour_factor: float = RGZ_CONTOUR_FACTOR, min_pixels: int = 5, link_factor: float = 1.5,
                       link_max: float = 60.0, progress: Callable[[int, int, str], None] | None = None,
                       labels: str = "rule", catalogue=None, split_radius: float | None = None,
                       peak_rule: str = "rgz") -> dict:
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
    labels: 'rule' (:func:`derive_sources` with the keywords above and ``peak_rule``),
        'consensus' (human labels: the RGZ consensus catalogue ``catalogue``, default the shipped
        one, by sky position, :func:`gluon_rcnn.radio.consensus.label_image`; emission it does not
        cover is an ignore region, ``iscrowd=1``; images it does not cover are left out and listed
        in ``uncovered``) or 'auto' (consensus where it covers an image, else the rule). Each image
        says which in its ``labels`` field ('rgz_consensus' or 'rule').
    split_radius: degrees; when given, images whose centres are closer than this are kept in the
        same split (single linkage), so no sky position is in both (0.25 suits 9' FIRST cutouts).

    Returns the summary of :func:`write_coco` plus ``failed``: files that could not be read, with
    the error, ``uncovered`` and ``labels`` (images per label kind).
    """
    render = render.upper()
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    if render != "D1" and ir_dir is None:
        raise ValueError(f"render={render} draws radio contours over infrared: pass ir_dir")
    if labels not in ("rule", "consensus", "auto"):
        raise ValueError(f"labels must be 'rule', 'consensus' or 'auto', got {labels!r}")
    paths = sorted({str(Path(p)) for p in fits_paths})
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cat = None
    if labels != "rule":
        from .consensus import load_consensus
        cat = load_consensus(catalogue) if not hasattr(catalogue, "cpnt_xyz") else catalogue
    records, failed, uncovered, used_names = [], [], [], set()
    for i, p in enumerate(paths):
        try:
            rec = _fits_record(Path(p), out_dir, render, ir_dir, used_names, labels=labels, catalogue=cat,
                               sigma_level=sigma_level, contour_factor=contour_factor, min_pixels=min_pixels,
                               link_factor=link_factor, link_max=link_max, peak_rule=peak_rule)
            if rec is None:
                uncovered.append(p)
            else:
                records.append(rec)
        except (FITSError, FileNotFoundError) as e:
            failed.append({"file": p, "error": str(e)})
        if progress is not None:
            progress(i + 1, len(paths), p)
    if split_radius is None:
        is_test = _split_indices(len(records), test_fraction, seed)
    else:
        is_test = sky_split([(r["image"]["ra"], r["image"]["dec"]) for r in records], test_fraction, seed, split_radius)
    summary = write_coco(out_dir, records, is_test,
                         extra_info={"render": render, "labels": labels, "sigma_level": sigma_level,
                                     "contour_factor": contour_factor, "min_pixels": min_pixels,
                                     "link_factor": link_factor, "link_max": link_max, "peak_rule": peak_rule,
                                     "seed": seed, "split_radius_deg": split_radius})
    summary["failed"] = failed
    summary["uncovered"] = uncovered
    summary["labels"] = dict(Counter(r["image"]["labels"] for r in records))
    return summary


def sky_split(positions, test_fraction: float, seed: int, radius: float) -> np.ndarray:
    """Boolean (n,): True for test images, splitting *sky positions*, not images: images whose
    centres ``(ra, dec)`` (degrees) are within ``radius`` degrees of each other (single linkage)
    form one group, and whole groups go to one split, in a ``default_rng(seed)`` order, until
    the test split holds ``test_fraction`` of the images (at least one group each when possible)."""
    from .consensus import angular_separation_deg

    n = len(positions)
    is_test = np.zeros(n, bool)
    if n == 0:
        return is_test
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    near = angular_separation_deg(pos[:, 0], pos[:, 1], pos[:, 0], pos[:, 1]) <= radius
    from scipy.sparse.csgraph import connected_components

    n_groups, group = connected_components(near, directed=False)
    order = np.random.default_rng(seed).permutation(n_groups)
    target = n * test_fraction
    taken, last = 0, None
    for g in order:
        if taken >= target:
            break
        members = group == g
        is_test[members] = True
        taken += int(members.sum())
        last = g
    if 0 < test_fraction < 1 and n_groups >= 2 and is_test.all():
        is_test[group == last] = False  # keep a training group
    return is_test


def render_fits(path, render: str = "D1", ir_dir=None, contours: str = "claran", **kw):
    """Read a radio FITS, derive its sources and render it as the network sees it.

    Returns ``(rgb uint8 (H, W, 3) on the FITS pixel grid, wcs, labelling)``. ``render`` is
    'D1' (radio only), 'D3' or 'D4' (both need ``ir_dir`` holding an infrared FITS of the same
    stem, reprojected onto the radio grid) draw the contour ladder ``contours`` ('claran', ClaRAN's 5 sigma
    x 2**k, or 'rgz': :func:`~gluon_rcnn.radio.render.ladder_levels`) as
    :func:`gluon_rcnn.radio.survey.render_tile` does. ``kw`` goes to :func:`derive_sources`.
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
    from .render import ladder_levels

    levels = ladder_levels(radio, contours, noise=lab.noise if np.isfinite(lab.noise) and lab.noise > 0 else None)
    if render == "D3":
        return render_d3(radio, ir, levels=levels), wcs, lab
    # one hull around the image's regions above the lowest contour, as ClaRAN (render_d4)
    return render_d4(radio, ir, levels=levels), wcs, lab


def _fits_record(path: Path, out_dir: Path, render: str, ir_dir, used_names: set, labels: str = "rule",
                 catalogue=None, **kw) -> dict | None:
    rgb, wcs, lab = render_fits(path, render, ir_dir, **kw)
    radio_shape = rgb.shape[:2]
    human = None
    if labels != "rule":
        from .consensus import label_image
        human = label_image(read_fits(path)[0], wcs, catalogue)
        if not human.sources:
            if labels == "consensus":
                return None
            human = None
    name = path.stem + ".png"
    k = 1
    while name in used_names:
        name = f"{path.stem}_{k}.png"
        k += 1
    used_names.add(name)
    _write_png(out_dir / "images" / name, rgb)
    h, w = radio_shape
    ra, dec = (float(v) for v in wcs.all_pix2world([[(w - 1) / 2, (h - 1) / 2]], 0)[0])
    image = {"file_name": name, "width": int(radio_shape[1]), "height": int(radio_shape[0]),
             "fits_path": str(path.resolve()), "noise": lab.noise, "threshold": lab.threshold,
             "n_blank": lab.n_blank, "ra": ra, "dec": dec}
    if human is not None:
        image.update(labels="rgz_consensus", skipped=[])
        return {"image": image, "annotations": consensus_annotations(human), "skipped": []}
    skipped = [_skip_record(s, name) for s in lab.skipped]
    image["skipped"] = skipped
    image["labels"] = "rule"
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
                       test_fraction: float = 0.2, sigma_level: float = RGZ_BASE_SIGMA, contour_factor: float = RGZ_CONTOUR_FACTOR,
                       min_pixels: int = 10, link_factor: float = 1.5, link_max: float = 60.0,
                       human_test: int = 0, split_radius: float = 0.25) -> dict:
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

    human_test: when > 0, the test split is that many cutouts the RGZ consensus catalogue covers
    (drawn with ``seed``; human labels then come from :func:`write_human_labels`), and the training
    images are drawn only among cutouts whose centres are more than ``split_radius`` degrees from
    every test centre (0.25 deg > the 0.212 deg diagonal of a cutout: no shared sky); the summary
    adds ``min_train_test_separation_deg``. 0: a random split of the drawn images (``test_fraction``).
    """
    zpath = _firstgalaxydata_zip()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zpath) as zf:
        members = sorted(m for m in zf.namelist() if m.endswith(".png") and m.split("/")[1] in ("train", "valid", "test"))
        test_members: list[str] = []
        if human_test:
            from .consensus import angular_separation_deg, first_cutout_wcs, firstgalaxydata_position, image_sources
            from .consensus import load_consensus
            cat = load_consensus()
            pos = {m: firstgalaxydata_position(m) for m in members}
            covered = [m for m in members if image_sources(cat, first_cutout_wcs(*pos[m], (300, 300)), (300, 300))[0]]
            test_members = [covered[i] for i in sorted(rng.permutation(len(covered))[:human_test])]
            t, a = np.array([pos[m] for m in test_members]), np.array([pos[m] for m in members])
            nearest = angular_separation_deg(a[:, 0], a[:, 1], t[:, 0], t[:, 1]).min(1)
            members = [m for m, d in zip(members, nearest) if d > split_radius]  # the test cutouts are at 0
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
        for m in test_members:  # human-labelled test cutouts; their rule labels go to instances_test.json
            img = cv2.imdecode(np.frombuffer(zf.read(m), np.uint8), cv2.IMREAD_GRAYSCALE)
            lab = derive_sources(img.astype(np.float32), sigma_level=sigma_level, contour_factor=contour_factor,
                                 min_pixels=min_pixels, link_factor=link_factor, link_max=link_max)
            chosen.append((m, m.split("/")[2], lab, img))
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
    if human_test:
        is_test = np.array([i >= len(records) - len(test_members) for i in range(len(records))])
    else:
        is_test = _split_indices(len(records), test_fraction, seed)
    summary = write_coco(out_dir, records, is_test,
                         extra_info={"source": "firstgalaxydata galaxy_data.zip (FIRST cutouts)", "size": size,
                                     "seed": seed, "n_images": n_images, "human_test": human_test})
    if human_test:
        summary["human"] = write_human_labels(out_dir, "test")
    return summary


# ---------------------------------------------------------------------------------------------
# human labels: the RGZ consensus catalogue on the real images at hand
# ---------------------------------------------------------------------------------------------

def ignore_annotations(box, scale: float = 1.0) -> list[dict]:
    """An ignore region as COCO crowd annotations (``iscrowd=1``), one per category: crowd boxes
    only ignore detections of their own category (pycocotools' COCOeval, VOC's "difficult" in
    :func:`gluon_rcnn.engine.evaluate.voc_ap_per_class`), and an unlabelled source may be
    detected as any class. The loader never trains on crowd boxes."""
    x1, y1, x2, y2 = (v * scale for v in box)
    return [{"category_id": c["id"], "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1)),
             "iscrowd": 1, "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]], "ignore": True}
            for c in COCO_CATEGORIES]


def consensus_annotations(lab, scale: float = 1.0) -> list[dict]:
    """COCO annotations of a :class:`~gluon_rcnn.radio.consensus.ConsensusLabelling`: one per
    catalogue source of the six classes (its islands' box and outlines, ``catalog_id``, ``cl``),
    then the ignore regions as crowd annotations (:func:`ignore_annotations`)."""
    anns = []
    for s in lab.sources:
        if s.category_id is None:
            anns.extend(ignore_annotations(s.box, scale))
            continue
        a = _source_annotation(s, scale)
        a.pop("peaks", None)
        a.update(catalog_id=s.consensus.catalog_id, cl=s.consensus.cl, labels="rgz_consensus")
        anns.append(a)
    for r in lab.ignore:
        anns.extend(ignore_annotations(r.box, scale))
    return anns


def firstgalaxydata_cutouts(zip_path=None) -> list[tuple[str, float, float]]:
    """``(member, ra, dec)`` of every distinct cutout PNG in the firstgalaxydata wheel (its
    train/valid/test folders; ``all/`` repeats them), sorted by member name."""
    from .consensus import firstgalaxydata_position

    zpath = Path(zip_path) if zip_path else _firstgalaxydata_zip()
    with zipfile.ZipFile(zpath) as zf:
        members = sorted(m for m in zf.namelist() if m.endswith(".png") and m.split("/")[1] in ("train", "valid", "test"))
    return [(m, *firstgalaxydata_position(m)) for m in members]


def real_images_at_hand(mirabest_dir=None, firstgalaxydata: bool = True) -> list[dict]:
    """The real FIRST images at hand, as dicts ``{name, kind, ra, dec, load}``: ``kind``
    'mirabest' (a FITS in ``mirabest_dir``, centre from its WCS) or 'firstgalaxydata' (a wheel
    cutout, centre from its name, WCS :func:`~gluon_rcnn.radio.consensus.first_cutout_wcs`);
    ``load()`` returns ``(image float32 (H, W), wcs)``. Unreadable FITS raise FITSError."""
    from .consensus import first_cutout_wcs

    out: list[dict] = []
    if mirabest_dir is not None:
        for p in sorted(Path(mirabest_dir).glob("*.fits")):
            radio, wcs, _ = read_fits(p)
            h, w = radio.shape
            ra, dec = (float(v) for v in wcs.all_pix2world([[(w - 1) / 2, (h - 1) / 2]], 0)[0])
            out.append({"name": p.name, "kind": "mirabest", "ra": ra, "dec": dec, "path": str(p),
                        "load": (lambda p=p: read_fits(p)[:2])})
    if firstgalaxydata:
        zpath = _firstgalaxydata_zip()
        for m, ra, dec in firstgalaxydata_cutouts(zpath):
            def load(m=m, ra=ra, dec=dec):
                with zipfile.ZipFile(zpath) as zf:
                    img = cv2.imdecode(np.frombuffer(zf.read(m), np.uint8), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise FITSError(f"{zpath}:{m}: not a PNG image")
                return img.astype(np.float32), first_cutout_wcs(ra, dec, img.shape)
            out.append({"name": m, "kind": "firstgalaxydata", "ra": ra, "dec": dec, "member": m, "load": load})
    return out


def rule_settings(kind: str, peak_rule: str = "rgz") -> dict:
    """derive_sources keywords for an image kind: FITS get RGZ's ladder (``L_0 = 3*sqrt(3)*rms``,
    factor sqrt(3)) with ``peak_rule='rgz'``, or the older 4-sigma x 2 ladder with 'prominence';
    firstgalaxydata's PNGs (background clipped, rms unknown) start the ladder at the clip."""
    from .labels import RGZ_RULE

    kw = dict(RGZ_RULE) if peak_rule == "rgz" else {"sigma_level": 4.0, "contour_factor": 2.0, "peak_rule": "prominence"}
    kw["min_pixels"] = 10 if kind == "firstgalaxydata" else 5
    return kw


def image_record(name: str, image: np.ndarray, labelling, scale: float, kind: str, labels: str,
                 out_dir: Path, extra: dict | None = None) -> dict:
    """Render ``image`` (D1), scale it by ``scale``, write ``out_dir/images/<name>`` and return a
    :func:`write_coco` record whose annotations come from ``labelling``: a
    :class:`~gluon_rcnn.radio.consensus.ConsensusLabelling` (``labels='rgz_consensus'``, human) or a
    :class:`~gluon_rcnn.radio.labels.Labelling` (``labels='rule'``)."""
    h, w = image.shape
    noise = getattr(labelling, "noise", None)
    rgb = render_d1(np.where(np.isfinite(image), image, 0).astype(np.float32),
                    noise=noise if noise and np.isfinite(noise) and noise > 0 else None)
    if scale != 1.0:
        rgb = cv2.resize(rgb, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
    _write_png(out_dir / "images" / name, rgb)
    if labels == "rgz_consensus":
        anns = consensus_annotations(labelling, scale)
        skipped = []
    else:
        anns = [dict(_source_annotation(s, scale), labels="rule") for s in labelling.sources]
        skipped = [_skip_record(s, name, scale) for s in labelling.skipped]
        for s in labelling.skipped:  # a source outside the six classes is not background either
            anns.extend(ignore_annotations(s.box, scale))
    image_info = {"file_name": name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "kind": kind,
                  "labels": labels, "scale": scale, **(extra or {})}
    return {"image": image_info, "annotations": anns, "skipped": skipped}


def write_human_labels(data_dir, split: str = "test", catalogue=None) -> dict:
    """Human labels for a demo dataset (:func:`build_demo_dataset`): the images of
    ``annotations/instances_<split>.json`` that the RGZ consensus catalogue covers, with the
    consensus's sources (scaled as the image) and ignore regions (crowd boxes), written to
    ``annotations/instances_<split>_human.json`` (same image ids and file names, so detections on
    the split score against it directly). Returns ``{"path", "images", "counts", "ignore",
    "min_train_test_separation_deg"}``; the last is the smallest angular distance between the
    centre of a covered ``split`` image and any ``train`` image (the demo's split is random over
    cutouts, not over sky positions: FIRST cutouts are 0.15 deg wide, so a smaller distance means
    shared sky)."""
    from .consensus import angular_separation_deg, first_cutout_wcs, firstgalaxydata_position, label_image, load_consensus

    data_dir = Path(data_dir)
    src = json.loads((data_dir / "annotations" / f"instances_{split}.json").read_text())
    cat = load_consensus() if catalogue is None else catalogue
    zpath = _firstgalaxydata_zip()
    images, anns, counts, n_ignore, pos = [], [], Counter(), 0, []
    with zipfile.ZipFile(zpath) as zf:
        for info in src["images"]:
            member = str(info.get("source", "")).removeprefix("firstgalaxydata:")
            if not member or member == info.get("source"):
                continue
            img = cv2.imdecode(np.frombuffer(zf.read(member), np.uint8), cv2.IMREAD_GRAYSCALE)
            ra, dec = firstgalaxydata_position(member)
            lab = label_image(img.astype(np.float32), first_cutout_wcs(ra, dec, img.shape), cat)
            if not lab.sources:
                continue
            images.append(dict(info, labels="rgz_consensus", ra=ra, dec=dec))
            pos.append((ra, dec))
            for a in consensus_annotations(lab, float(info.get("scale", 1.0))):
                anns.append(dict(a, id=len(anns) + 1, image_id=info["id"]))
                if a["iscrowd"]:
                    n_ignore += 1
                else:
                    counts[RGZ_CLASSES[a["category_id"] - 1]] += 1
    min_sep = float("nan")
    train_file = data_dir / "annotations" / "instances_train.json"
    if pos and split != "train" and train_file.exists():
        tr = [firstgalaxydata_position(str(i.get("source", "")).removeprefix("firstgalaxydata:"))
              for i in json.loads(train_file.read_text())["images"] if str(i.get("source", "")).startswith("firstgalaxydata:")]
        if tr:
            a, b = np.array(tr), np.array(pos)
            min_sep = float(angular_separation_deg(a[:, 0], a[:, 1], b[:, 0], b[:, 1]).min())
    out = data_dir / "annotations" / f"instances_{split}_human.json"
    coco = {"info": dict(src.get("info", {}), labels="RGZ consensus (human), gluon_rcnn.radio.consensus"),
            "images": images, "annotations": anns, "categories": src.get("categories", COCO_CATEGORIES)}
    with atomic_write(out) as f:
        json.dump(coco, f)
    return {"path": str(out), "images": len(images), "counts": {c: int(counts[c]) for c in RGZ_CLASSES},
            "ignore": n_ignore, "min_train_test_separation_deg": min_sep}
