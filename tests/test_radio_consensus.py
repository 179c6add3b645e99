"""Human labels: the RGZ consensus catalogue, matching it to images, RGZ's peak count, the agreement
of the rule labeller with the consensus (gluon_rcnn.radio.consensus, docs/claran_labels.md)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("astropy")
pytest.importorskip("scipy")

from conftest import need_first_fits  # noqa: E402
from gluon_rcnn.radio import consensus as cs  # noqa: E402
from gluon_rcnn.radio.dataset import consensus_annotations, ignore_annotations  # noqa: E402
from gluon_rcnn.radio.labels import RGZ_RULE, _count_peaks_rgz, derive_sources  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADER = "catalog_id,first_id,num_cpnts,num_peaks,cpnts_ras,cpnts_decs,ang_extent,cl,training\n"


def gaussian(shape, x, y, amp, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def write_cat(path, rows):
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ catalogue

def test_shipped_catalogue_loads_with_licence():
    cat = cs.load_consensus()
    assert len(cat) == 11836
    assert cs.DEFAULT_CATALOGUE.exists() and (cs.DEFAULT_CATALOGUE.parent / "LICENSE.rgz_rcnn").exists()
    assert "MIT" in (cs.DEFAULT_CATALOGUE.parent / "LICENSE.rgz_rcnn").read_text()
    counts = {}
    for s in cat:
        counts[s.class_name] = counts.get(s.class_name, 0) + 1
    assert counts == {"1C_1P": 5300, "1C_2P": 1331, "1C_3P": 1412, "2C_2P": 1251, "2C_3P": 1208, "3C_3P": 1334}
    assert sum(s.training for s in cat) > 0 and all(len(s.ras) == s.num_cpnts for s in cat)


def test_catalogue_parses_plain_and_gzip(tmp_path):
    rows = ["1,FIRSTJ000007.0+081644,1,1,0.0293,8.2792,24.1,0.75,1",
            "2,FIRSTJ000315.0+111543,3,3,0.8292;0.8129;0.7919,11.2687;11.2618;11.2510,144.3,0.77,0"]
    p = write_cat(tmp_path / "c.csv", rows)
    g = tmp_path / "c.csv.gz"
    g.write_bytes(gzip.compress(p.read_bytes()))
    for path in (p, g):
        cat = cs.load_consensus(path)
        assert [s.class_name for s in cat] == ["1C_1P", "3C_3P"]
        assert cat[1].ras == (0.8292, 0.8129, 0.7919) and cat[1].training == 0 and cat[1].row == 3


@pytest.mark.parametrize("row, column, words", [
    ("7,F,1,1,360.5,8.0,20,0.8,1", "cpnts_ras", "outside [0.0, 360.0)"),
    ("7,F,1,1,-0.1,8.0,20,0.8,1", "cpnts_ras", "outside"),
    ("7,F,1,1,10.0,95.0,20,0.8,1", "cpnts_decs", "outside [-90.0, 90.0]"),
    ("7,F,1,1,10.0,abc,20,0.8,1", "cpnts_decs", "not a number"),
    ("7,F,1,1,10.0,nan,20,0.8,1", "cpnts_decs", "outside"),
    ("7,F,2,2,10.0;10.01,8.0,20,0.8,1", "cpnts_decs", "1 positions for num_cpnts = 2"),
    ("7,F,4,4,1;2;3;4,1;2;3;4,20,0.8,1", "num_cpnts", "1..3"),
    ("7,F,x,1,10.0,8.0,20,0.8,1", "num_cpnts", "not an integer"),
    ("7,F,2,1,10.0;10.01,8.0;8.0,20,0.8,1", "num_peaks", "fewer peaks"),
    ("7,F,1,1,10.0,8.0,20,1.5,1", "cl", "[0, 1]"),
    ("7,F,1,1,10.0,8.0,20,0.8,", "training", "missing"),
])
def test_malformed_row_is_an_error_naming_file_row_and_column(tmp_path, row, column, words):
    p = write_cat(tmp_path / "bad.csv", ["1,G,1,1,10.0,8.0,20,0.8,1", row])
    with pytest.raises(cs.CatalogueError) as e:
        cs.load_consensus(p)
    msg = str(e.value)
    assert str(p) in msg and "row 3" in msg and f"column {column}" in msg and words in msg, msg


def test_agreement_script_names_the_bad_catalogue_row(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("rgz_agreement", ROOT / "scripts" / "rgz_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = write_cat(tmp_path / "bad.csv", ["1,G,1,1,10.0,8.0,20,0.8,1", "2,G,2,2,10.0;370.2,8.0;8.1,20,0.8,1"])
    assert mod.main(["--catalogue", str(p), "--mirabest", "", "--no-firstgalaxydata"]) == 2
    err = capsys.readouterr().err
    assert f"{p}: row 3, column cpnts_ras: position 2 = 370.2 is outside" in err


def test_missing_column_and_unreadable_file(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("catalog_id,first_id\n1,F\n")
    with pytest.raises(cs.CatalogueError, match=r"h\.csv: row 1 \(header\): missing column"):
        cs.load_consensus(p)
    with pytest.raises(cs.CatalogueError, match="nope.csv"):
        cs.load_consensus(tmp_path / "nope.csv")


# ------------------------------------------------------------------ matching on a synthetic FITS with a WCS

def synthetic_field(tmp_path, cls_a="1C_1P"):
    """120x120 FIRST-like field (noise 1): source A (one blob), source B (two blobs, one source),
    and an island C the catalogue does not cover. Returns (image, wcs, catalogue path, truth)."""
    from astropy.io import fits

    from gluon_rcnn.radio import read_fits

    rng = np.random.default_rng(0)
    shape = (120, 120)
    img = rng.normal(0, 1, shape)
    img += gaussian(shape, 30, 40, 60, 2.0)                                   # A
    img += gaussian(shape, 80, 30, 50, 2.0) + gaussian(shape, 96, 30, 50, 2.0)  # B: two components
    img += gaussian(shape, 60, 95, 40, 2.0)                                   # C: not in the catalogue
    wcs = cs.first_cutout_wcs(150.0, 30.0, shape)
    f = tmp_path / "field.fits"
    fits.PrimaryHDU(img.astype(np.float32), header=wcs.to_header()).writeto(f)
    data, wcs2, _ = read_fits(f)
    (ra_a, dec_a), (ra_b1, dec_b1), (ra_b2, dec_b2) = wcs2.all_pix2world([[30.4, 40.2], [80, 30], [96.3, 29.8]], 0)
    n_a, p_a = int(cls_a[0]), int(cls_a[3])
    ras_a = ";".join([f"{ra_a:.8f}"] * n_a)
    decs_a = ";".join([f"{dec_a:.8f}"] * n_a)
    cat = write_cat(tmp_path / "cat.csv", [
        f"101,FIRSTJA,{n_a},{p_a},{ras_a},{decs_a},20,0.95,1",
        f"102,FIRSTJB,2,2,{ra_b1:.8f};{ra_b2:.8f},{dec_b1:.8f};{dec_b2:.8f},40,0.7,0",
        "103,FIRSTJFAR,1,1,10.0,-20.0,20,0.9,1",  # elsewhere on the sky
    ])
    return data, wcs2, cat


def test_label_image_two_sources_and_one_ignore_region(tmp_path):
    img, wcs, catp = synthetic_field(tmp_path)
    lab = cs.label_image(img, wcs, cs.load_consensus(catp), noise=1.0)
    assert [(s.consensus.catalog_id, s.class_name, len(s.components)) for s in lab.sources] == [
        ("101", "1C_1P", 1), ("102", "2C_2P", 2)]
    a, b = lab.sources
    assert a.box[0] < 30 < a.box[2] and a.box[1] < 40 < a.box[3] and a.box[2] - a.box[0] < 15
    assert b.box[0] < 80 and b.box[2] > 96 and b.box[1] < 30 < b.box[3]
    assert len(b.masks) == 2 and not (b.masks[0] & b.masks[1]).any()
    assert len(lab.ignore) == 1 and lab.ignore[0].reason == "no catalogue source"
    x1, y1, x2, y2 = lab.ignore[0].box
    assert x1 < 60 < x2 and y1 < 95 < y2
    anns = consensus_annotations(lab, scale=0.5)
    real = [x for x in anns if not x["iscrowd"]]
    crowd = [x for x in anns if x["iscrowd"]]
    assert [x["category_id"] for x in real] == [1, 4] and real[0]["catalog_id"] == "101"
    assert len(crowd) == 6 and {x["category_id"] for x in crowd} == set(range(1, 7))
    assert crowd[0]["bbox"][0] == pytest.approx(x1 * 0.5)


def test_component_off_every_island_picks_nearest_within_radius_else_ignored(tmp_path):
    img, wcs, _ = synthetic_field(tmp_path)
    (ra, dec), (ra2, dec2) = wcs.all_pix2world([[30 + 7, 40], [30 + 20, 40]], 0)  # 7 px ~ 12.6", 20 px = 36"
    p = write_cat(tmp_path / "near.csv", [f"1,F,1,1,{ra:.8f},{dec:.8f},20,0.9,1"])
    lab = cs.label_image(img, wcs, cs.load_consensus(p), noise=1.0, match_radius=20.0)
    assert [s.class_name for s in lab.sources] == ["1C_1P"]
    p = write_cat(tmp_path / "far.csv", [f"1,F,1,1,{ra2:.8f},{dec2:.8f},20,0.9,1"])
    lab = cs.label_image(img, wcs, cs.load_consensus(p), noise=1.0)
    assert lab.sources == [] and any("no island" in r.reason for r in lab.ignore)


# ------------------------------------------------------------------ RGZ's peak count

@pytest.mark.parametrize("n", [1, 2, 3])
def test_rgz_peaks_one_per_innermost_contour(n):
    shape = (80, 120)
    img = np.random.default_rng(1).normal(0, 1, shape)
    for k in range(n):  # blobs that merge at the lowest contour, split higher up
        img += gaussian(shape, 40 + 9 * k, 40, 200.0, 3.0)
    lab = derive_sources(img, noise=1.0, **RGZ_RULE)
    assert [s.class_name for s in lab.sources] == [f"1C_{n}P"]
    assert lab.levels[0] == pytest.approx(3 * np.sqrt(3)) and lab.levels[1] / lab.levels[0] == pytest.approx(np.sqrt(3))


def test_rgz_peak_count_on_a_hand_made_contour_tree():
    v = np.zeros((5, 11))
    v[1:4, 1:10] = 1.5            # above L0 = 1
    v[2, 2] = 2.5                 # a leaf at L1 = 2 (nothing above L2 = 4)
    v[2, 5:8] = 3.0               # a region at L1 ...
    v[2, 6] = 5.0                 # ... enclosing a leaf at L2
    mask = v > 1
    peaks, vals = _count_peaks_rgz(v, mask, np.array([1.0, 2.0, 4.0]))
    assert peaks == [(6, 2), (2, 2)] and vals == [5.0, 2.5]
    flat = np.where(mask, 1.5, 0)
    assert _count_peaks_rgz(flat, mask, np.array([1.0, 2.0]))[0] == [(1, 1)]


def test_bad_peak_rule():
    with pytest.raises(ValueError, match="peak_rule"):
        derive_sources(np.zeros((10, 10)), peak_rule="nope")


# ------------------------------------------------------------------ agreement of the rule with the consensus

def test_agreement_core_on_a_tiny_synthetic_set(tmp_path):
    img, wcs, catp = synthetic_field(tmp_path)
    rule = derive_sources(img, noise=1.0, **RGZ_RULE)
    recs = cs.compare_to_rule(cs.label_image(img, wcs, cs.load_consensus(catp), noise=1.0), rule)
    assert [(r["class"], r["rule_class"]) for r in recs] == [("1C_1P", "1C_1P"), ("2C_2P", "2C_2P")]
    s = cs.agreement_summary(recs)
    assert (s["n"], s["class"], s["components"], s["peaks"], s["top_confusion"]) == (2, 1.0, 1.0, 1.0, None)
    # the volunteers say A has 3 peaks: the rule's 1 peak disagrees in class and peaks, not components
    (tmp_path / "b").mkdir()
    img, wcs, catp = synthetic_field(tmp_path / "b", cls_a="1C_3P")
    recs = cs.compare_to_rule(cs.label_image(img, wcs, cs.load_consensus(catp), noise=1.0), rule)
    s = cs.agreement_summary(recs)
    assert (s["class"], s["components"], s["peaks"]) == (0.5, 1.0, 0.5)
    assert s["top_confusion"] == (("1C_3P", "1C_1P"), 1)
    table = cs.format_confusion(s["confusion"])
    assert table.splitlines()[3].split()[:2] == ["1C_3P", "1"]


def test_ignore_regions_are_neither_true_nor_false_positives():
    from pycocotools.coco import COCO

    from gluon_rcnn.engine.evaluate import voc_ap_per_class
    from gluon_rcnn.radio.dataset import COCO_CATEGORIES

    anns = [{"category_id": 1, "bbox": [10, 10, 10, 10], "area": 100, "iscrowd": 0}] + ignore_annotations((50, 50, 70, 70))
    ds = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
          "annotations": [dict(a, id=i + 1, image_id=1) for i, a in enumerate(anns)], "categories": COCO_CATEGORIES}
    gt = COCO()
    gt.dataset = json.loads(json.dumps(ds))
    gt.createIndex()
    res = [{"image_id": 1, "category_id": 3, "bbox": [51, 51, 19, 19], "score": 0.9},
           {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.8},
           {"image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "score": 0.7}]
    aps, m = voc_ap_per_class(gt, res)
    assert aps[1] == pytest.approx(1.0) and np.isnan(aps[3])


# ------------------------------------------------------------------ real FIRST cutouts (not shippable: conftest.py)

def test_real_mirabest_fields_get_consensus_labels():
    d = need_first_fits()
    from gluon_rcnn.radio import read_fits

    cat = cs.load_consensus()
    files = sorted(d.glob("*.fits"))
    labelled = 0
    for f in files[:40]:
        img, wcs, _ = read_fits(f)
        lab = cs.label_image(img, wcs, cat)
        for s in lab.sources:
            x1, y1, x2, y2 = s.box
            assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
        labelled += bool(lab.sources)
    assert labelled >= 1


def test_human_labels_for_the_demo_dataset(tmp_path):
    pytest.importorskip("firstgalaxydata")
    from pycocotools.coco import COCO

    from gluon_rcnn.radio.dataset import build_demo_dataset, write_human_labels

    build_demo_dataset(tmp_path, n_images=40, seed=0)
    for split in ("train", "test"):
        r = write_human_labels(tmp_path, split)
        gt = COCO(r["path"])
        ids = {i["id"] for i in gt.dataset["images"]}
        src = json.loads((tmp_path / "annotations" / f"instances_{split}.json").read_text())
        assert ids <= {i["id"] for i in src["images"]} and len(ids) == r["images"]
        assert all(a["image_id"] in ids for a in gt.dataset["annotations"])
        assert sum(r["counts"].values()) == sum(1 for a in gt.dataset["annotations"] if not a["iscrowd"])
        assert all(i["labels"] == "rgz_consensus" for i in gt.dataset["images"])


def test_build_coco_dataset_with_consensus_labels(tmp_path):
    from astropy.io import fits

    from gluon_rcnn.radio.dataset import build_coco_dataset

    synthetic_field(tmp_path)  # field.fits + cat.csv
    other = gaussian((120, 120), 50, 50, 60, 2.0) + np.random.default_rng(3).normal(0, 1, (120, 120))
    fits.PrimaryHDU(other.astype(np.float32), header=cs.first_cutout_wcs(200.0, -10.0, (120, 120)).to_header()).writeto(
        tmp_path / "elsewhere.fits")
    files = [tmp_path / "field.fits", tmp_path / "elsewhere.fits"]
    s = build_coco_dataset(files, tmp_path / "c", labels="consensus", catalogue=tmp_path / "cat.csv", test_fraction=0)
    assert s["uncovered"] == [str(tmp_path / "elsewhere.fits")] and s["labels"] == {"rgz_consensus": 1}
    assert s["total"]["1C_1P"] == 1 and s["total"]["2C_2P"] == 1 and s["ignore"]["train"] == 6
    train = json.loads((tmp_path / "c" / "annotations" / "instances_train.json").read_text())
    assert train["images"][0]["labels"] == "rgz_consensus"
    assert sorted(a["catalog_id"] for a in train["annotations"] if not a["iscrowd"]) == ["101", "102"]
    s = build_coco_dataset(files, tmp_path / "a", labels="auto", catalogue=tmp_path / "cat.csv", test_fraction=0)
    assert s["labels"] == {"rgz_consensus": 1, "rule": 1} and not s["uncovered"]
    with pytest.raises(ValueError, match="labels must be"):
        build_coco_dataset(files, tmp_path / "x", labels="humans")


def test_sky_split_keeps_nearby_images_together():
    from gluon_rcnn.radio.dataset import sky_split

    # three groups: 4 images within 0.1 deg of (10, 10), 3 near (50, 20), 3 near (200, -30)
    pos = [(10, 10), (10.05, 10), (10.1, 10.02), (10.0, 10.08), (50, 20), (50.1, 20), (50, 20.1),
           (200, -30), (200.1, -30), (200, -30.1)]
    for seed in range(5):
        t = sky_split(pos, 0.3, seed, 0.25)
        assert len({bool(v) for v in t[:4]}) == len({bool(v) for v in t[4:7]}) == len({bool(v) for v in t[7:]}) == 1
        assert t.any() and not t.all()
        a = np.array(pos)
        sep = cs.angular_separation_deg(a[~t, 0], a[~t, 1], a[t, 0], a[t, 1])
        assert sep.min() > 0.25
