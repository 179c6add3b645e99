"""A ClaRAN v0.2-format checkpoint (tensorpack npz, R50-FPN, 6 RGZ classes) through the tensorpack
importer, run with ClaRAN's preprocessing on a real FIRST cutout rendered D1 and D3.

No ClaRAN weights are public as an npz (its README links a TF checkpoint on Google Drive): the file
here is synthetic, built from the variable manifest (tests/data/tensorpack_manifests/), random values.
It shows the format loads and runs, not what ClaRAN detects.

The second half proves the conversion against ClaRAN's own inference graph: tests/data/claran_reference/
first_d1.npz holds what ClaRAN's code (chenwuperth/claran on tensorpack 02c38f26, TensorFlow 2.15, seeded
``spread`` weights) detected on four real FIRST cutouts exported by DS9 as ClaRAN's fits2png does
(bench/compare_claran.py made it); the FITS cannot ship, so those tests read them beside the checkout.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import need_first_fits
from gluon_rcnn.builders import build_rpn
from gluon_rcnn.convert.tensorpack import (TensorpackConversionError, from_tensorpack, tensorpack_config,
                                           tensorpack_overrides)
from gluon_rcnn.profiles import rule_names
from gluon_rcnn.structures.categories import RGZ_CLASSES

KIND = "ClaRAN-v0.2-FasterRCNN-R50FPN"
MANIFEST = Path(__file__).parent / "data" / "tensorpack_manifests" / f"{KIND}.json"
REPO = Path(__file__).resolve().parents[1]
RADIO = "gluon_rcnn.radio needs the radio packages (astropy, scipy, reproject)"


def _variables():
    return json.loads(MANIFEST.read_text())["variables"]


@pytest.fixture(scope="module")
def claran_npz(module_tmp):
    """A synthetic ClaRAN v0.2 npz: every variable of the manifest, as tensorpack's
    dump-model-params writes them (``:0`` suffix), random values, positive BN variances."""
    rng = np.random.default_rng(0)
    src = {}
    for v in _variables():
        a = rng.standard_normal(v["shape"], dtype=np.float32) * 0.01
        if v["name"].endswith("variance/EMA"):
            a = np.abs(a) + 1.0
        src[v["name"] + ":0"] = a
    path = module_tmp("claran") / "model-70000.npz"
    np.savez(path, **src)
    return path, src


@pytest.fixture(scope="module")
def model(claran_npz):
    return from_tensorpack(claran_npz[0], KIND)  # strict: every variable used, every parameter filled


def test_loads_strictly_with_the_six_rgz_classes(claran_npz, model):
    path, src = claran_npz
    assert model.tensorpack_missing == [] and model.tensorpack_unexpected == []
    assert tuple(model.classes) == tuple(RGZ_CLASSES) == ("1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P")
    assert model.num_classes == 6 and not model.training  # foreground classes; + BG: 7 logits
    sd = model.state_dict()
    assert torch.equal(sd["roi_heads.stages.0.predictor.cls_score.weight"],
                       torch.from_numpy(src["fastrcnn/outputs/class/W:0"]).t())
    assert torch.equal(sd["backbone.body.conv1.weight"],  # HWIO -> OIHW, BGR -> RGB
                       torch.from_numpy(src["conv0/W:0"]).permute(3, 2, 0, 1).flip(1))
    assert sd["roi_heads.stages.0.predictor.bbox_pred.weight"].shape == (28, 1024)
    # strict: one variable too many or too few is refused
    extra = {k[:-2]: v for k, v in src.items()}
    extra["global_step"] = np.zeros((), np.int64)
    with pytest.raises(TensorpackConversionError, match="global_step"):
        from_tensorpack(extra, KIND)


def test_claran_preprocessing_short_edge_600(model):
    cfg = model.cfg
    # ClaRAN v0.2 README / slurm_train.sh: PREPROC.TEST_SHORT_EDGE_SIZE=600; config.py MAX_SIZE 1333
    assert cfg.PREPROC.TEST_SHORT_EDGE_SIZE == 600 and cfg.PREPROC.MAX_SIZE == 1333
    assert list(cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [600, 600]
    # ClaRAN config.py: MAX_SIZE = ceil(1333 / 32) * 32 in FPN mode; ours the same rule
    assert rule_names(cfg)["MAX_SIZE_ROUND_UP"] is True
    assert list(cfg.PREPROC.PIXEL_MEAN) == [123.675, 116.28, 103.53]  # ClaRAN config.py (RGB)
    assert list(cfg.PREPROC.PIXEL_STD) == [58.395, 57.12, 57.375]
    for side in (150, 132):  # a 150 px cutout; ClaRAN's RGZ images are 132 px
        batch = model.preprocess([torch.zeros(3, side, side, dtype=torch.uint8)])
        assert batch.image_sizes == [(600, 600)] and batch.original_sizes == [(side, side)]
        assert tuple(batch.tensor.shape[-2:]) == (608, 608)  # padded to a multiple of 32


def _claran_anchor_cells(stride, size, ratios=(0.5, 1.0, 2.0)):
    """ClaRAN v0.2 data.py get_all_anchors: py-faster-rcnn's generate_anchors(stride, scales=size/stride,
    ratios) (utils/generate_anchors.py: a (0, 0, stride-1, stride-1) window, w = round(sqrt(area/ratio)),
    h = round(w*ratio), scaled, corners ctr -/+ (w-1)/2; ratio-major), then x2, y2 += 1."""
    base = np.array([0, 0, stride - 1, stride - 1], np.float64)
    w, h = base[2] - base[0] + 1, base[3] - base[1] + 1
    cx, cy = base[0] + 0.5 * (w - 1), base[1] + 0.5 * (h - 1)
    ws = np.round(np.sqrt(w * h / np.asarray(ratios)))
    hs = np.round(ws * np.asarray(ratios))
    ws, hs = ws * size / stride, hs * size / stride
    a = np.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], 1)
    a[:, 2:] += 1
    return a


def test_claran_anchors_are_exactly_the_models_anchors():
    """ClaRAN v0.2's anchors are py-faster-rcnn's quantised ones plus x2, y2 += 1 (its data.py
    get_all_anchors, re-computed above in numpy from that code): the ClaRAN kind's profile
    (tensorpack-2019) picks the rule ANCHOR_CELLS='legacy_end_plus_one'; its cell anchors, and every
    anchor of a whole 600 x 600 image's grid, equal them exactly. The Detectron-1 rule ('legacy') is 1 px
    short on x2, y2."""
    strides, sizes = (4, 8, 16, 32, 64), (32, 64, 128, 256, 512)
    claran = [_claran_anchor_cells(st, sz) for st, sz in zip(strides, sizes)]
    np.testing.assert_array_equal(claran[0][1], [-14, -14, 18, 18])  # size 32, ratio 1, stride 4
    cfg = tensorpack_config(KIND)
    assert cfg.RULES.PROFILE == "tensorpack-2019" and rule_names(cfg)["ANCHOR_CELLS"] == "legacy_end_plus_one"
    gen = build_rpn(cfg, 256).anchor_generator
    for o, c in zip(gen.cell_anchors, claran):
        np.testing.assert_array_equal(o.numpy(), c)
    # the whole grid of a 608 x 608 padded batch: ClaRAN's shifts (arange * stride, float64) + cells
    shapes = [(608 // s, 608 // s) for s in strides]
    for a, (h, w), st, c in zip(gen(shapes, "cpu", (608, 608)), shapes, strides, claran):
        sx, sy = np.meshgrid(np.arange(w) * st, np.arange(h) * st)
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1).astype(np.float64)
        want = (shifts[:, None, :] + c[None]).reshape(-1, 4).astype(np.float32)
        np.testing.assert_array_equal(a.numpy(), want)
    legacy = build_rpn(get_cfg_with(list(tensorpack_overrides(KIND)) + ["RULES.ANCHOR_CELLS='legacy'"]),
                       256).anchor_generator.cell_anchors
    for o, c in zip(legacy, claran):
        np.testing.assert_array_equal(o.numpy()[:, :2], c[:, :2])
        np.testing.assert_array_equal(o.numpy()[:, 2:] + 1, c[:, 2:])


def get_cfg_with(overrides):
    from gluon_rcnn.config import get_default_config
    cfg = get_default_config()
    cfg.update_args(overrides)
    cfg.DATA.CLASS_NAMES = list(RGZ_CLASSES)
    return cfg.finalize()


def _cutout_150(path):
    from gluon_rcnn.radio import read_fits
    radio, wcs, _ = read_fits(path)
    h, w = radio.shape
    y0, x0 = (h - 150) // 2, (w - 150) // 2
    return radio[y0:y0 + 150, x0:x0 + 150], wcs[y0:y0 + 150, x0:x0 + 150]


def _synthetic_ir_fits(path, radio, radio_wcs):
    """An infrared FITS on another grid (1.375"/px, rotated 30 deg, offset): an infrared source at the
    sky position of the radio peak, noise elsewhere."""
    from astropy.io import fits
    from astropy.wcs import WCS
    ra0, dec0 = radio_wcs.pixel_to_world_values(75.0, 75.0)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra0) + 0.003, float(dec0) - 0.002]
    w.wcs.crpix = [215.5, 205.5]
    w.wcs.cdelt = [-1.375 / 3600, 1.375 / 3600]
    t = np.deg2rad(30.0)
    w.wcs.pc = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    yy, xx = np.mgrid[0:420, 0:420]
    ir = np.random.default_rng(3).normal(0, 1, (420, 420))
    py, px = np.unravel_index(np.nanargmax(radio), radio.shape)
    ix, iy = w.world_to_pixel_values(*radio_wcs.pixel_to_world_values(px, py))
    ir += 40 * np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / 8.0)
    fits.PrimaryHDU(ir.astype(np.float32), header=w.to_header()).writeto(path)
    return (int(px), int(py))


def test_runs_on_a_real_first_cutout_rendered_d1_and_d3(model, tmp_path):
    pytest.importorskip("astropy", reason=RADIO)
    pytest.importorskip("reproject", reason=RADIO)
    from gluon_rcnn.radio import render
    radio, wcs = _cutout_150(sorted(need_first_fits().glob("*.fits"))[0])
    assert radio.shape == (150, 150)
    peak = _synthetic_ir_fits(tmp_path / "ir.fits", radio, wcs)
    ir = render.infrared_on_radio_grid(tmp_path / "ir.fits", wcs, radio.shape)
    assert np.isfinite(ir).all()
    y, x = np.unravel_index(np.argmax(ir), ir.shape)
    assert abs(x - peak[0]) <= 1 and abs(y - peak[1]) <= 1  # the infrared landed on the radio peak
    d1 = render.render_d1(radio)
    d3 = render.render_d3(radio, ir)
    logits = []
    hook = model.roi_heads.stages[0].predictor.cls_score.register_forward_hook(lambda m, i, o: logits.append(o))
    try:
        for rgb in (d1, d3):
            img = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # uint8 RGB (3, 150, 150)
            assert model.preprocess([img]).image_sizes == [(600, 600)]
            with torch.no_grad():
                (out,) = model([img])
            boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
            assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
            assert ((scores >= 0) & (scores <= 1)).all()
            assert ((labels >= 1) & (labels <= 6)).all()
            # boxes are in the 150 px cutout's pixels
            assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 150).all() and (boxes[:, [1, 3]] <= 150).all()
    finally:
        hook.remove()
    assert len(logits) == 2 and all(t.shape[1] == 7 and torch.isfinite(t).all() for t in logits)


# ------------------------------------------------------------------------------------------------
# ClaRAN's D1 rendering (SAOImage DS9's PNG export) and ClaRAN's own graph on real FIRST cutouts
# ------------------------------------------------------------------------------------------------

CLARAN_REF = Path(__file__).parent / "data" / "claran_reference"
#: DS9's colour tables (GPL, not shipped): Debian's saods9 puts them here
DS9_CMAPS = Path("/usr/share/saods9/cmaps")
#: ClaRAN v0.1 tools/fits_utils.py fits2png: -cmap gist_heat -cmap value 0.684039 0 (contrast, bias)
FITS2PNG = {"colormap": DS9_CMAPS / "gist_heat.sao", "contrast": 0.684039, "bias": 0.0}


def _synthetic_d1():
    """The 48 x 64 float32 image DS9 exported to tests/data/claran_reference/ds9_synthetic_*.png
    (``ds9 synth.fits -cmap grey|gist_heat [-cmap value 0.684039 0] -scale log -scale mode minmax
    -export png``, SAOImage DS9 8.4.1): noise, two sources, 7 NaN pixels."""
    rng = np.random.default_rng(20)
    yy, xx = np.mgrid[0:48, 0:64]
    a = rng.normal(0, 1e-4, (48, 64)) + 5e-3 * np.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / 8.0) \
        + 2e-3 * np.exp(-((xx - 45) ** 2 + (yy - 12) ** 2) / 18.0)
    a = a.astype(np.float32)
    a[0, :7] = np.nan
    return a


def _need_ds9_table(name):
    path = DS9_CMAPS / name
    if not path.exists():
        pytest.skip(f"DS9's colour table {path} is not installed (SAOImage DS9 is GPL: its tables are not "
                    f"shipped here; Debian: apt-get install saods9)")
    return path


@pytest.mark.parametrize("cmap", ["grey", "gist_heat"])
def test_d1_ds9_is_ds9s_png_byte_for_byte(cmap):
    """render_d1_ds9 = the PNG SAOImage DS9 8.4.1 itself exported (its two quantisation tables, NaN white,
    north up); the plain render_d1 formula is within 1 grey level of it, on the array's own row order."""
    import cv2
    from gluon_rcnn.radio import render
    kw = {} if cmap == "grey" else dict(FITS2PNG, colormap=_need_ds9_table("gist_heat.sao"))
    ds9 = cv2.imread(str(CLARAN_REF / f"ds9_synthetic_{cmap}.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    radio = _synthetic_d1()
    ours = render.render_d1_ds9(radio, **kw)
    assert ours.shape == ds9.shape == (48, 64, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ds9)
    assert (ours[-1, :7] == 255).all() and (ours[-1, 7] < 255).any()  # row 0 (with the NaNs) is written last
    if cmap == "grey":
        plain = render.render_d1(radio)[::-1]
        fin = np.isfinite(radio)[::-1]
        diff = np.abs(plain.astype(int) - ours.astype(int))[fin]
        assert diff.max() == 1 and (diff > 0).mean() > 0.1  # the tables' truncation, not another stretch
    else:
        assert len(np.unique(ours.reshape(-1, 3), axis=0)) > 100 and (ours[..., 0] >= ours[..., 2]).all()


def _claran_reference():
    path = CLARAN_REF / "first_d1.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing")
    z = np.load(path)
    return json.loads(str(z["meta_json"])), json.loads(str(z["variables_json"])), z


@pytest.fixture(scope="module")
def claran_graph_model():
    """The reference's weights (ClaRAN's graph, ``spread``, seed 0: re-drawn from the variable list) through
    the ClaRAN kind's converter."""
    from test_tensorpack_reference import spread_weights
    need_first_fits()  # the cutouts are rendered from the FITS: skip before drawing 41M weights
    meta, variables, _ = _claran_reference()
    weights = spread_weights(variables, meta["seed"])
    return from_tensorpack(weights, KIND)


def test_reference_is_claran_s_graph_and_layout():
    """The stored run is ClaRAN's tree on tensorpack 02c38f26 with its README's settings: 6 classes + BG
    (7 class logits, 28 box outputs), the manifest's variables exactly."""
    meta, variables, _ = _claran_reference()
    assert meta["claran_commit"].startswith("9ccc649") and meta["tensorpack_commit"].startswith("02c38f26")
    assert meta["config_overrides"] == ["MODE_MASK=False", "MODE_FPN=True", "PREPROC.TRAIN_SHORT_EDGE_SIZE=600,600",
                                        "PREPROC.TEST_SHORT_EDGE_SIZE=600"]
    graph = {k[:-2]: tuple(v) for k, v in variables.items()}
    manifest = {v["name"]: tuple(v["shape"]) for v in _variables()}
    assert graph == manifest
    assert graph["fastrcnn/outputs/class/W"] == (1024, 7) and graph["fastrcnn/outputs/box/W"] == (1024, 28)


#: case 0 (grey) in the default suite; the other three (one grey, two gist_heat) ~9 s each: make slow
CASES = [0] + [pytest.param(k, marks=pytest.mark.slow) for k in (1, 2, 3)]


def _cutout(case):
    """The stored reference ``z`` and case ``case``'s cutout rendered as DS9 exported it for ClaRAN's graph
    (checked by the SHA-256 of the image the graph read)."""
    import hashlib

    from gluon_rcnn.radio import read_fits, render
    _, _, z = _claran_reference()
    name, y0, x0, size, cmap = str(z[f"case{case}_fits"]).split(":")
    kw = {} if cmap == "grey" else dict(FITS2PNG, colormap=_need_ds9_table("gist_heat.sao"))
    radio, _, _ = read_fits(need_first_fits() / name)
    y0, x0, size = int(y0), int(x0), int(size)
    rgb = render.render_d1_ds9(radio[y0:y0 + size, x0:x0 + size], **kw)
    assert hashlib.sha256(rgb.tobytes()).hexdigest() == str(z[f"case{case}_sha256"]), "not the image ClaRAN's graph saw"
    return z, rgb


def _assert_claran_detections(out, z, case):
    """Every one of the graph's 100 detections paired with ours (same class): boxes within BOX_TOL px,
    scores within SCORE_TOL, nothing extra."""
    import tensorpack_compare as cmp
    tb, ts, tl = z[f"case{case}_final_boxes_orig"], z[f"case{case}_final_scores"], z[f"case{case}_final_class_ids"]
    assert len(tb) == 100
    idx, dist = cmp.pair(out["boxes"].numpy(), tb, out["labels"].numpy(), tl)
    assert (idx >= 0).all() and len(out["boxes"]) == len(tb), f"{(idx < 0).sum()} of ClaRAN's detections unpaired"
    assert dist.max() <= cmp.BOX_TOL, dist.max()
    assert np.abs(out["scores"].numpy()[idx] - ts).max() <= cmp.SCORE_TOL


@pytest.mark.parametrize("case", CASES)
def test_detections_equal_claran_graph_on_real_first_cutouts(case, claran_graph_model):
    """ClaRAN's own inference graph (chenwuperth/claran on tensorpack 02c38f26, TensorFlow 2.15, ``spread``
    weights; bench/compare_claran.py) on a 132 px FIRST cutout exported by DS9 as ClaRAN's fits2png does
    (grey, or gist_heat at contrast 0.684039 bias 0), against the converted model end to end on the same
    pixels: every one of the graph's 100 detections paired with ours (same class), boxes within 0.05 px in
    the cutout's pixels, scores within 1e-4; the 1000 proposals the same set (within 0.01 px).

    On the way, the resized input equals what ClaRAN's eval.py ``predict_image`` feeds its graph
    (``cv2.resize`` of the uint8 image, bilinear, to 600 x 600: the RESAMPLE rule of the kind's profile)."""
    import cv2
    import tensorpack_compare as cmp
    z, rgb = _cutout(case)
    model = claran_graph_model
    img = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    with torch.no_grad():
        batch = model.preprocess([img])
        assert batch.image_sizes == [tuple(int(v) for v in z[f"case{case}_resized_shape_hw"])] == [(600, 600)]
        resized = cv2.resize(rgb, (600, 600), interpolation=cv2.INTER_LINEAR)  # ClaRAN's predict_image
        theirs = model.preprocessor([torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))], [(600, 600)])
        assert torch.equal(batch.tensor, theirs.tensor)
        feats = model.features(batch.tensor)
        props, _ = model.rpn(feats, batch.image_sizes, None, tuple(batch.tensor.shape[-2:]))
        out = model.postprocess(model.roi_heads(feats, props, batch.image_sizes), batch.image_sizes,
                                batch.original_sizes)[0]
    tp_props = z[f"case{case}_rpn_proposal_boxes"]
    pi, pd = cmp.pair(props[0].numpy(), tp_props, tol=1.0)
    assert len(props[0]) == len(tp_props) == 1000 and (pi >= 0).all(), f"{(pi < 0).sum()} proposals unpaired"
    assert pd.max() <= 0.01, pd.max()
    _assert_claran_detections(out, z, case)
    if case == 0:  # and the plain call, as a user makes it
        with torch.no_grad():
            (plain,) = model([img])
        _assert_claran_detections(plain, z, case)
