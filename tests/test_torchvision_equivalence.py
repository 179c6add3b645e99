"""gluon_rcnn's converted model gives torchvision's results: stage by stage, and end to end on raw
images of every size (every image of the COCO subset in tests/data, and a sweep of synthetic sizes
from 50 to 2000 px).

End-to-end comparisons call the two *whole* models on the raw images (``tv(imgs)`` vs
``ours(imgs)``): each resizes with its own code, so the size rule (``RULES.RESIZE='floor'``,
which asks the installed torchvision) is tested, not bypassed. Weights are seeded random ones with
``box_score_thresh=0``, so every image gives up to 100 detections; the two lists are paired one to
one by ``detection_match.match_detections`` (tests/detection_match.py: labels equal, boxes within 1e-3 px,
scores within 1e-5, maximum assignment: the order of tied scores does not matter), then masks are
compared pair by pair (1e-3). Every detection must find its partner.

To keep ``make test`` short on two CPU cores the all-images runs use a light model that keeps
torchvision's whole pipeline (ResNet-18 body with random frozen-BN statistics, a 64-channel FPN,
the standard RPN, two-FC box head, four-conv mask head, only narrower) at ``min_size=256,
max_size=427``, with 300 RPN proposals per image; the stage-by-stage checks use torchvision's own
``*_resnet50_fpn`` (also with 300 proposals). ``bench/equivalence_torchvision.py`` runs the
ResNet-50 models at torchvision's default 800/1333 on all 128 images (docs/results.md).
"""
import random

import cv2
import pytest
import torch
import torchvision
from torchvision.models.detection import transform as tv_transform

import detection_match as eq
from conftest import COCO_IMAGES, COCO_SUBSET_IMAGES, need
from gluon_rcnn.convert import from_torchvision
from gluon_rcnn.preprocess import scaled_size, torchvision_size
from gluon_rcnn.rules.resize import RESIZE
from gluon_rcnn.structures.image_list import ImageBatch

SHORT, MAX_SIZE = 256, 427          # the reduced test size (torchvision min_size / max_size)
DEFAULT = (800, 1333)               # torchvision's default
BOX_TOL, SCORE_TOL, MASK_TOL = eq.BOX_TOL, eq.SCORE_TOL, eq.MASK_TOL
MASK_SWEEP_MAX_PIXELS = 1.2e6       # 100 pasted masks of a larger original are > 0.5 GB per model


def _sweep_sizes(n: int = 100, seed: int = 0) -> list[tuple[int, int]]:
    """n (h, w) pairs in 50..2000 px: COCO's 480x640, the corners and extreme aspect ratios first,
    then seeded random ones (a third of them with aspect ratios beyond 5:1)."""
    out = [(480, 640), (640, 480), (50, 2000), (2000, 50), (50, 50), (2000, 2000), (51, 1999), (1999, 51),
           (333, 500), (500, 333), (800, 1333), (1333, 800), (599, 1999), (1200, 63)]
    rng = random.Random(seed)
    while len(out) < n:
        if rng.random() < 1 / 3:
            short, long = rng.randint(50, 300), rng.randint(1500, 2000)
            out.append((short, long) if rng.random() < 0.5 else (long, short))
        else:
            out.append((rng.randint(50, 2000), rng.randint(50, 2000)))
    return out[:n]


SWEEP = _sweep_sizes()
E2E_SWEEP = SWEEP[:30]  # sizes run through the whole models (both archs; Mask where memory allows)


def _coco_files():
    files = sorted(need(COCO_IMAGES).glob("*.jpg"))
    assert len(files) == COCO_SUBSET_IMAGES, f"{COCO_IMAGES}: {len(files)} images, not {COCO_SUBSET_IMAGES}"
    return files


def _light_tv(arch: str, short: int = SHORT, max_size: int = MAX_SIZE, seed: int = 0, **kw):
    """torchvision's Faster/Mask R-CNN classes around a light ResNet-18 FPN (64 channels) and
    narrow heads, seeded random weights, random frozen-BN statistics, box_score_thresh=0."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    torch.manual_seed(seed)
    body = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    for name, p in body.named_parameters():  # like torchvision's trainable_layers=3
        if name.startswith(("conv1", "layer1")):
            p.requires_grad_(False)
    ch = 64
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512], ch,
                               extra_blocks=LastLevelMaxPool())
    kw = dict(num_classes=None, min_size=short, max_size=max_size, box_score_thresh=0.0,
              rpn_post_nms_top_n_test=300, box_head=TwoMLPHead(ch * 7 * 7, 256),
              box_predictor=FastRCNNPredictor(256, 91), **kw)
    if arch == "mask":
        tv = MaskRCNN(backbone, mask_head=MaskRCNNHeads(ch, [32] * 4, 1),
                      mask_predictor=MaskRCNNPredictor(32, 32, 91), **kw)
    else:
        tv = FasterRCNN(backbone, **kw)
    return eq.randomize_frozen_bn(tv, seed + 1).eval()


@pytest.fixture(scope="module")
def models():
    """get(arch, short, max_size) → (torchvision model, converted model), built once per module."""
    cache = {}

    def get(arch, short=SHORT, max_size=MAX_SIZE):
        key = (arch, short, max_size)
        if key not in cache:
            tv = _light_tv(arch, short, max_size)
            cache[key] = (tv, from_torchvision(tv))
        return cache[key]

    return get


def _check_pairing(stats: list[dict], where: list[str], mask: bool, min_detections: int):
    """Every image: same count, every detection paired within tolerance, masks within tolerance."""
    bad = [f"{w}: {s['n_tv']} vs {s['n_ours']} detections, {s['pairs']} paired, unpaired scores "
           f"tv {s['unpaired_tv_scores'][:3]} ours {s['unpaired_ours_scores'][:3]}"
           for s, w in zip(stats, where) if not (s["n_tv"] == s["n_ours"] == s["pairs"])]
    assert not bad, "detections that found no partner:\n" + "\n".join(bad[:10])
    summ = eq.summarize(stats)
    print(f"\n{len(stats)} images, {summ['pairs']} detection pairs: max |box| {summ['box']:.3g} px, "
          f"max |score| {summ['score']:.3g}, max |mask| {summ['mask']}", end="")
    assert summ["box"] <= BOX_TOL and summ["score"] <= SCORE_TOL  # guaranteed by the pairing itself
    assert summ["pairs"] >= min_detections, f"only {summ['pairs']} detections compared: the test would prove little"
    if mask:
        assert summ["mask_shape_ok"], [(w, s["mask_shape_ok"]) for s, w in zip(stats, where) if not s["mask_shape_ok"]]
        worst = max(zip(stats, where), key=lambda x: x[0]["mask"])
        assert summ["mask"] <= MASK_TOL, f"mask difference {summ['mask']} at {worst[1]}"
    return summ


def _check_in_image(dets, sizes):
    for d, (h, w) in zip(dets, sizes):
        if d["boxes"].numel():
            assert d["boxes"].min() >= 0 and d["boxes"][:, 2].max() <= w + 1e-3 and d["boxes"][:, 3].max() <= h + 1e-3


# ---------------------------------------------------------------------------------------------
# stage by stage (torchvision's ResNet-50 models), then the whole models on the same raw images

@pytest.mark.parametrize("arch,backbone,spread", [("mask", "r50", True), ("faster", "r50", True),
                                                  ("mask", "light", False)])
@torch.no_grad()
def test_stages_match_torchvision(arch, backbone, spread):
    if backbone == "r50":
        # (the full-width mask head costs ~0.5 GFLOP per detection: 25 per image keep this short)
        tv = eq.build_torchvision(arch, SHORT, MAX_SIZE, box_score_thresh=0.05, rpn_post_nms_top_n_test=300,
                                  box_detections_per_img=25 if arch == "mask" else 100)
    else:
        tv = _light_tv(arch)
    if spread:
        # random init gives ~1/91 for every class; a wider classifier gives real score spread so the
        # default 0.05 threshold, NMS and the top-100 cut all act
        tv.roi_heads.box_predictor.cls_score.weight.mul_(40)
    ours = from_torchvision(tv)
    assert ours.cfg.TEST.RESULT_SCORE_THRESH == tv.roi_heads.score_thresh
    assert ours.cfg.MODE_MASK == (arch == "mask")
    imgs = [eq.load_rgb01(f) for f in _coco_files()[:2]]
    originals = [tuple(i.shape[-2:]) for i in imgs]
    il, _ = tv.transform(imgs)  # resize and normalise once, the same way, for both
    batch = ImageBatch(il.tensors, [tuple(s) for s in il.image_sizes], originals)

    # (a) backbone + FPN features
    f_tv_dict = tv.backbone(il.tensors)
    f_tv = list(f_tv_dict.values())
    f_ours = ours.features(il.tensors)
    assert len(f_tv) == len(f_ours) == 5
    for a, b in zip(f_tv, f_ours):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)

    # (b) RPN proposals
    p_tv, _ = tv.rpn(il, f_tv_dict)
    p_ours, _ = ours.rpn(f_ours, batch.image_sizes, None, tuple(il.tensors.shape[-2:]))
    for a, b in zip(p_tv, p_ours):
        assert a.shape == b.shape and a.shape[0] > 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-3)

    # (c) final detections in original image coordinates, from the same preprocessed batch
    d_tv, _ = tv.roi_heads(f_tv_dict, p_tv, il.image_sizes)
    d_tv = tv.transform.postprocess(d_tv, il.image_sizes, originals)
    d_ours = ours(batch)
    stats = [eq.compare_detections(a, b) for a, b in zip(d_tv, d_ours)]
    _check_pairing(stats, ["img0", "img1"], arch == "mask", min_detections=2)
    _check_in_image(d_ours, originals)

    # (d) the whole models on the raw images (each resizes with its own code)
    stats = [eq.compare_detections(a, b) for a, b in zip(tv(imgs), ours(imgs))]
    _check_pairing(stats, ["img0", "img1"], arch == "mask", min_detections=2)


# ---------------------------------------------------------------------------------------------
# end to end on every image of the COCO subset (tests/data/coco_subset)

@pytest.mark.parametrize("arch", ["mask", "faster"])
@torch.no_grad()
def test_every_coco128_image_end_to_end(models, arch):
    tv, ours = models(arch)
    files = _coco_files()
    stats = []
    for f in files:
        img = eq.load_rgb01(f)
        a, b = tv([img])[0], ours([img])[0]
        _check_in_image([b], [tuple(img.shape[-2:])])
        stats.append(eq.compare_detections(a, b))
    _check_pairing(stats, [f.name for f in files], arch == "mask", min_detections=90 * len(files))


# ---------------------------------------------------------------------------------------------
# the size rule over a sweep of sizes

@pytest.mark.parametrize("short,max_size", [DEFAULT, (SHORT, MAX_SIZE)])
@torch.no_grad()
def test_preprocess_sweep_matches_torchvision_transform(models, short, max_size):
    """For 100 sizes: the converted model's Preprocessor gives torchvision's transform's image
    sizes and normalised (padded) tensors, and scaled_size(..., 'floor') its sizes."""
    tv, ours = models("faster", short, max_size)
    assert ours.preprocessor.resize is RESIZE["floor"]
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, 2000, 2000), dtype=torch.uint8, generator=g).float().div_(255.0)
    for h, w in SWEEP:
        img = noise[:, :h, :w]  # a strided view: both sides must cope with it
        il, _ = tv.transform([img])
        batch = ours.preprocess([img])
        expect = tuple(int(s) for s in il.image_sizes[0])
        assert batch.image_sizes == [expect], (h, w)
        assert scaled_size(h, w, short, max_size, "floor") == expect, (h, w)
        assert batch.original_sizes == [(h, w)]
        assert batch.tensor.shape == il.tensors.shape, (h, w)
        diff = float((batch.tensor - il.tensors).abs().max())
        assert diff <= 1e-6, f"{h}x{w}: normalised pixels differ by {diff}"
    # the sweep can tell rules apart: tensorpack's nearest-integer rule differs on many of its sizes
    assert sum(scaled_size(h, w, short, max_size, "round") != scaled_size(h, w, short, max_size, "floor")
               for h, w in SWEEP) >= 10


def _resized_coco(files, i, h, w):
    bgr = cv2.resize(cv2.imread(str(files[i % len(files)])), (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float().div_(255.0)


@pytest.mark.parametrize("arch", ["mask", "faster"])
@torch.no_grad()
def test_size_sweep_end_to_end(models, arch):
    """The whole models on coco images resized to sweep sizes, two sizes per call (padded batch)."""
    tv, ours = models(arch)
    files = _coco_files()
    sizes = [s for s in E2E_SWEEP if arch == "faster" or s[0] * s[1] <= MASK_SWEEP_MAX_PIXELS]
    assert len(sizes) >= 20 and (480, 640) in sizes and (50, 2000) in sizes
    stats, where = [], []
    for k in range(0, len(sizes), 2):
        imgs = [_resized_coco(files, k + j, h, w) for j, (h, w) in enumerate(sizes[k:k + 2])]
        d_tv, d_ours = tv(imgs), ours(imgs)
        _check_in_image(d_ours, [tuple(i.shape[-2:]) for i in imgs])
        for a, b, im in zip(d_tv, d_ours, imgs):
            stats.append(eq.compare_detections(a, b))
            where.append("x".join(map(str, im.shape[-2:])))
    _check_pairing(stats, where, arch == "mask", min_detections=50 * len(sizes))


# ---------------------------------------------------------------------------------------------
# the rule is the installed torchvision's, whatever it is

def _float32_rule(image, self_min_size, self_max_size, target=None, fixed_size=None):
    """torchvision < 0.21's size rule: the scale computed in float32."""
    h, w = image.shape[-2:]
    scale = min(float(torch.tensor(self_min_size, dtype=torch.float32) / torch.tensor(min(h, w), dtype=torch.float32)),
                float(torch.tensor(self_max_size, dtype=torch.float32) / torch.tensor(max(h, w), dtype=torch.float32)))
    image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                            recompute_scale_factor=True, align_corners=False)[0]
    return image, target


def _double_rule(image, self_min_size, self_max_size, target=None, fixed_size=None):
    """torchvision >= 0.21's size rule: the scale computed in double precision."""
    h, w = image.shape[-2:]
    scale = min(float(self_min_size) / min(h, w), float(self_max_size) / max(h, w))
    image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                            recompute_scale_factor=True, align_corners=False)[0]
    return image, target


@torch.no_grad()
def test_size_rule_follows_installed_torchvision(models, monkeypatch):
    """Swap torchvision's resize function for the older float32 rule and for the newer double one:
    scaled_size(..., 'floor'), our Preprocessor and the whole converted model follow."""
    tv, ours = models("faster", *DEFAULT)
    img = eq.load_rgb01(_coco_files()[0])
    assert tuple(img.shape[-2:]) == (480, 640)
    try:
        for rule, expect_480x640 in [(_float32_rule, (799, 1066)), (_double_rule, (800, 1066))]:
            monkeypatch.setattr(tv_transform, "_resize_image_and_masks", rule)
            torchvision_size.cache_clear()
            assert scaled_size(480, 640, 800, 1333, "floor") == expect_480x640
            for h, w in SWEEP:  # sizes only: cheap
                assert scaled_size(h, w, *DEFAULT, "floor") == tuple(rule(
                    torch.empty((3, h, w), device="meta"), *DEFAULT)[0].shape[-2:]), (rule.__name__, h, w)
            il, _ = tv.transform([img])
            batch = ours.preprocess([img])
            assert batch.image_sizes == [tuple(il.image_sizes[0])] == [expect_480x640]
            torch.testing.assert_close(batch.tensor, il.tensors, rtol=0, atol=1e-6)
            stats = [eq.compare_detections(tv([img])[0], ours([img])[0])]
            _check_pairing(stats, [f"480x640 under {rule.__name__}"], False, min_detections=90)
    finally:
        monkeypatch.undo()
        torchvision_size.cache_clear()
    # and back to the installed rule
    il, _ = tv.transform([img])
    assert ours.preprocess([img]).image_sizes == [tuple(il.image_sizes[0])]
    # negative control: the end-to-end comparison notices a one-pixel size difference (tensorpack's
    # rounding makes this image 800x1067, torchvision 800x1066)
    ours.preprocessor.resize = RESIZE["round"]
    try:
        assert ours.preprocess([img]).image_sizes == [(800, 1067)]
        s = eq.compare_detections(tv([img])[0], ours([img])[0])
        assert s["pairs"] < s["n_tv"], "a different input size went unnoticed"
    finally:
        ours.preprocessor.resize = RESIZE["floor"]


def test_pairing_is_order_free_and_strict():
    """match_detections pairs tied scores whatever their order, and never pairs beyond tolerance."""
    a = {"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [5, 5, 8, 8]]),
         "scores": torch.tensor([0.5, 0.5, 0.25]), "labels": torch.tensor([1, 2, 3])}
    b = {k: v[[1, 0, 2]].clone() for k, v in a.items()}  # the tied pair in the other order
    ia, ib, ua, ub = eq.match_detections(a, b)
    assert ua.numel() == ub.numel() == 0 and sorted(zip(ia.tolist(), ib.tolist())) == [(0, 1), (1, 0), (2, 2)]
    b["boxes"][2, 0] += 2 * BOX_TOL  # out of tolerance: unpaired on both sides
    b["scores"][0] += 2 * SCORE_TOL
    ia, ib, ua, ub = eq.match_detections(a, b)
    assert ua.tolist() == [1, 2] and ub.tolist() == [0, 2] and list(zip(ia.tolist(), ib.tolist())) == [(0, 1)]
    b = {k: v.clone() for k, v in a.items()}
    b["labels"][0] = 7  # a different label never pairs
    assert eq.match_detections(a, b)[2].tolist() == [0]


def test_converter_refuses_other_models():
    with pytest.raises(TypeError):
        from_torchvision(torch.nn.Linear(2, 2))
