"""Training equivalence with torchvision: on the same sampled anchors / RoIs, our RPN, box and mask
losses equal torchvision's ``compute_loss``, ``fastrcnn_loss`` and ``maskrcnn_loss``.

A torchvision Faster/Mask R-CNN (ResNet-50-FPN, FrozenBN, seeded random weights, small images) is
converted with ``from_torchvision``; real coco128 images with their real boxes, labels and
polygons go through both. Features are computed once and fed to both heads. Our samplers pick the
anchors and RoIs; torchvision's samplers are made to pick the same ones, and torchvision then
labels them and encodes their regression targets itself, so the test also cross-checks our
matchers and box coders.

Mask targets follow different rules (ours: the polygons rasterised at the M x M bin centres of
each RoI; torchvision: RoIAlign of the full-image bitmap, a soft target), so the mask loss is
compared on identical targets (torchvision's ``project_masks_on_boxes`` patched to return ours),
and the two target rules are compared separately: their binarised targets must agree on most
pixels.
"""
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import FrozenBatchNorm2d

from conftest import COCO_ANN, COCO_IMAGES, need
from gluon_rcnn.convert import from_torchvision
from gluon_rcnn.data.coco import COCODetection
from gluon_rcnn.data.transforms import item_to_tensors
from gluon_rcnn.detector import _rescale_targets
from gluon_rcnn.structures.masks import rasterize_polygons_in_boxes

# two batches of two real images (indices into the train set of tests/data/coco_subset): landscape +
# portrait (padding: ids 89, 640x480, and 370, 480x640), and two crowded scenes (small boxes: ids 257, 389)
BATCHES = [(0, 8), (3, 9)]
TOL = dict(rtol=1e-5, atol=1e-6)


def _tv_model(arch: str):
    """torchvision's R-50-FPN detector as ``*rcnn_resnet50_fpn`` builds it for pretrained backbones
    (FrozenBN, conv1+layer1 frozen), with seeded random weights and small images."""
    torch.manual_seed(0)
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3)
    cls = MaskRCNN if arch == "mask" else FasterRCNN
    tv = cls(backbone, num_classes=91, min_size=256, max_size=427)
    with torch.no_grad():
        # random weights with identity FrozenBN give FPN features of std ~35, which saturate every
        # head (class CE ~12, mask BCE ~20: almost linear, blind to small errors); scaled down to
        # ~unit spread the losses sit in their sensitive range (CE ~log 91, BCE ~0.7)
        for block in tv.backbone.fpn.layer_blocks:
            block[0].weight.mul_(1 / 32)
            block[0].bias.mul_(1 / 32)
    return tv


def _coco_masks(polygons, h: int, w: int) -> torch.Tensor:
    """Full-image uint8 (K, h, w) bitmaps of each instance's polygons, as torchvision's COCO
    references build them (pycocotools)."""
    from pycocotools import mask as mask_utils
    out = []
    for polys in polygons:
        rles = mask_utils.frPyObjects([p.astype(np.float64).tolist() for p in polys], h, w)
        out.append(mask_utils.decode(mask_utils.merge(rles)))
    return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, h, w), dtype=torch.uint8)


def _load(ds, idxs):
    images, targets, tv_targets = [], [], []
    for i in idxs:
        item = ds[i]
        img, t = item_to_tensors(item)
        h, w = img.shape[-2:]
        images.append(img.float() / 255)
        targets.append(t)
        tv_targets.append({"boxes": t["boxes"].clone(), "labels": t["labels"].clone(),
                           "masks": _coco_masks(item["polygons"], h, w)})
    return images, targets, tv_targets


def _candidate_index(rois: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Index in ``cand`` of each row of ``rois`` (which were taken from ``cand``); distinct
    indices even if ``cand`` holds duplicate boxes."""
    eq = (rois[:, None, :] == cand[None, :, :]).all(-1)  # (S, P)
    assert bool(eq.any(1).all()), "a sampled RoI is not one of the candidates (proposals + GT)"
    used, out = set(), []
    for row in eq:
        j = next(int(k) for k in torch.nonzero(row).flatten().tolist() if int(k) not in used)
        used.add(j)
        out.append(j)
    return torch.tensor(out, dtype=torch.long)


def _same_loss(name, ours, theirs, report):
    """Assert our loss equals torchvision's (the sums run in another order, so up to rounding) and
    note the relative difference."""
    torch.testing.assert_close(ours, theirs, **TOL, msg=lambda m: f"{name}: {m}")
    rel = abs(ours.item() - theirs.item()) / max(abs(theirs.item()), 1e-12)
    report.append(f"{name} {ours.item():.8g} vs {theirs.item():.8g} (rel {rel:.1e})")
    return rel


class _FixedSampler:
    """Stands in for torchvision's BalancedPositiveNegativeSampler: returns the given sample as
    (positive, negative) masks, after checking it against the labels torchvision assigned."""

    def __init__(self, pos, neg, batch_size, fraction, expected_labels=None):
        self.pos, self.neg = pos, neg  # per image: index tensors
        self.batch_size, self.fraction = batch_size, fraction
        self.expected_labels = expected_labels  # per image: labels of the positives (RoIs), or None
        self.calls = 0

    def __call__(self, labels):
        self.calls += 1
        pos_masks, neg_masks = [], []
        for i, lab in enumerate(labels):
            pos, neg = self.pos[i], self.neg[i]
            # torchvision's own labels at our sample: our positives are its positives, ours negatives its
            # negatives (cross-checks the matcher), and the fg/bg balance is the one its sampler keeps
            assert bool((lab[pos] >= 1).all()) and bool((lab[neg] == 0).all())
            if self.expected_labels is not None:
                assert torch.equal(lab[pos].long(), self.expected_labels[i])
            n_pos = min(int((lab >= 1).sum()), int(self.batch_size * self.fraction))
            n_neg = min(int((lab == 0).sum()), self.batch_size - n_pos)
            assert (pos.numel(), neg.numel()) == (n_pos, n_neg)
            p = torch.zeros_like(lab, dtype=torch.uint8)
            n = torch.zeros_like(lab, dtype=torch.uint8)
            p[pos] = 1
            n[neg] = 1
            assert not bool((p & n).any())
            pos_masks.append(p)
            neg_masks.append(n)
        return pos_masks, neg_masks


@pytest.fixture(scope="module")
def coco():
    return COCODetection(str(need(COCO_ANN)), str(need(COCO_IMAGES)),
                         train=True, with_masks=True)


@pytest.mark.parametrize("arch", ["faster", "mask"])
@torch.no_grad()
def test_losses_equal_torchvision_on_the_same_samples(arch, coco, monkeypatch):
    tv = _tv_model(arch)
    ours = from_torchvision(tv)
    assert ours.rpn.beta == pytest.approx(1 / 9) and ours.roi_heads.smooth_l1_beta == pytest.approx(1 / 9)
    mask_on = arch == "mask"
    assert ours.roi_heads.mask_on == mask_on
    torch.manual_seed(1)
    stats = {"agree": 0, "pixels": 0, "tv_rule_mask_loss": [], "n_fg_anchors": 0, "n_fg_rois": 0}

    for idxs in BATCHES:
        images, targets, tv_targets = _load(coco, idxs)

        # ---- the same preprocessing --------------------------------------------------------
        tv.train()
        il, tv_targets = tv.transform(images, tv_targets)
        batch = ours.eval().preprocess(images)
        assert batch.image_sizes == [tuple(s) for s in il.image_sizes]
        assert batch.tensor.shape == il.tensors.shape
        torch.testing.assert_close(batch.tensor, il.tensors, rtol=0, atol=1e-4)
        # targets in the resized pixels: our scaling of boxes (and polygons) agrees with torchvision's;
        # both sides then use the very same GT boxes
        targets = _rescale_targets(targets, batch.original_sizes, batch.image_sizes)
        for t, tt in zip(targets, tv_targets):
            torch.testing.assert_close(t["boxes"], tt["boxes"], **TOL)
            t["boxes"] = tt["boxes"].clone()
            assert torch.equal(t["labels"], tt["labels"])
            if not mask_on:
                del t["polygons"], tt["masks"]
        ours.train()

        # ---- features once, for both ---------------------------------------------------------
        image_shape = tuple(il.tensors.shape[-2:])
        f_tv = tv.backbone(il.tensors)
        feats = list(f_tv.values())

        # ---- 1. RPN ------------------------------------------------------------------------
        anchors = torch.cat(ours.rpn.anchor_generator([f.shape[-2:] for f in feats], feats[0].device, image_shape))
        anchors_tv = tv.rpn.anchor_generator(il, feats)
        for a in anchors_tv:
            assert torch.equal(a, anchors)
        sa = ours.rpn.sample_anchors(anchors, targets)
        N, S = sa.index.shape
        fg, bg = sa.fg & sa.valid, ~sa.fg & sa.valid
        stats["n_fg_anchors"] += int(fg.sum())
        assert int(fg.sum()) > 0
        # torchvision labels the anchors and encodes their targets itself
        labels_tv, matched_tv = tv.rpn.assign_targets_to_anchors(anchors_tv, tv_targets)
        reg_tv = tv.rpn.box_coder.encode(matched_tv, anchors_tv)
        for i in range(N):
            lab = labels_tv[i][sa.index[i][sa.valid[i]]]
            assert torch.equal(lab, sa.fg[i][sa.valid[i]].float()), "anchor labels differ from torchvision's"
            # same formula, same op order: the regression targets are bitwise torchvision's
            k = sa.index[i][fg[i]]
            assert torch.equal(sa.box_targets[i][fg[i]], reg_tv[i][k])
        sampler = _FixedSampler([sa.index[i][fg[i]] for i in range(N)], [sa.index[i][bg[i]] for i in range(N)],
                                tv.rpn.fg_bg_sampler.batch_size_per_image, tv.rpn.fg_bg_sampler.positive_fraction)
        monkeypatch.setattr(tv.rpn, "fg_bg_sampler", sampler)
        monkeypatch.setattr(ours.rpn, "sample_anchors", lambda a, t, **kw: sa)
        # the real forward passes, each sampler pinned to our sample
        proposals_tv, rpn_tv = tv.rpn(il, f_tv, tv_targets)
        proposals, rpn_ours = ours.rpn(feats, batch.image_sizes, targets, image_shape)
        assert sampler.calls == 1
        for a, b in zip(proposals_tv, proposals):  # training top-k/NMS: same proposals too
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=1e-3)
        report = []
        _same_loss("rpn_cls", rpn_ours["rpn_cls"], rpn_tv["loss_objectness"], report)
        _same_loss("rpn_box", rpn_ours["rpn_box"], rpn_tv["loss_rpn_box_reg"], report)

        # ---- 2. box head (and 3. mask head) on the same RoIs ---------------------------------
        # both get exactly our proposals
        sr = ours.roi_heads.sample(proposals, targets).check()
        fg_r, bg_r = sr.fg & sr.valid, ~sr.fg & sr.valid
        stats["n_fg_rois"] += int(fg_r.sum())
        assert int(fg_r.sum()) > 0
        pos, neg, pos_labels = [], [], []
        for i, (p, t) in enumerate(zip(proposals, targets)):
            cand = torch.cat([p, t["boxes"]])  # torchvision's add_gt_proposals order
            ci = _candidate_index(sr.rois[i][sr.valid[i]], cand)
            f = sr.fg[i][sr.valid[i]]
            order = torch.argsort(ci[f])  # torchvision keeps its sample in index order
            pos.append(ci[f][order])
            neg.append(ci[~f])
            pos_labels.append(sr.labels[i][sr.valid[i]][f][order])
        rsampler = _FixedSampler(pos, neg, tv.roi_heads.fg_bg_sampler.batch_size_per_image,
                                 tv.roi_heads.fg_bg_sampler.positive_fraction, expected_labels=pos_labels)
        monkeypatch.setattr(tv.roi_heads, "fg_bg_sampler", rsampler)
        monkeypatch.setattr(ours.roi_heads, "sample", lambda p, t: sr)

        captured = {}
        if mask_on:
            edges = [t["polygons"] for t in targets]
            by_image = {id(tt["masks"]): i for i, tt in enumerate(tv_targets)}
            orig_project = tv_roi_heads.project_masks_on_boxes
            orig_loss = tv_roi_heads.maskrcnn_loss

            def project_ours(gt_masks, boxes, matched_idxs, M):
                """Our rule (polygons at the bin centres) on torchvision's RoIs; torchvision's rule kept
                alongside for the agreement statistic."""
                e = edges[by_image[id(gt_masks)]]
                ours_t = rasterize_polygons_in_boxes(e[matched_idxs], boxes, M)
                captured.setdefault("targets", []).append((ours_t, orig_project(gt_masks, boxes, matched_idxs, M)))
                return ours_t

            def loss_spy(mask_logits, proposals_, gt_masks, gt_labels, idxs_):
                with monkeypatch.context() as m:  # torchvision's own rule, for the record
                    m.setattr(tv_roi_heads, "project_masks_on_boxes", orig_project)
                    captured["tv_rule"] = orig_loss(mask_logits, proposals_, gt_masks, gt_labels, idxs_)
                return orig_loss(mask_logits, proposals_, gt_masks, gt_labels, idxs_)

            monkeypatch.setattr(tv_roi_heads, "project_masks_on_boxes", project_ours)
            monkeypatch.setattr(tv_roi_heads, "maskrcnn_loss", loss_spy)

        _, roi_tv = tv.roi_heads(f_tv, proposals, il.image_sizes, tv_targets)
        roi_ours = ours.roi_heads(feats, proposals, batch.image_sizes, targets)
        assert rsampler.calls == 1
        _same_loss("frcnn_cls", roi_ours["frcnn_cls"], roi_tv["loss_classifier"], report)
        _same_loss("frcnn_box", roi_ours["frcnn_box"], roi_tv["loss_box_reg"], report)
        if mask_on:
            # (a) identical targets: identical loss arithmetic
            _same_loss("mask", roi_ours["mask"], roi_tv["loss_mask"], report)
            # (b) the two target rules on these RoIs
            for ours_t, tv_t in captured["targets"]:
                stats["agree"] += int(((tv_t >= 0.5).float() == ours_t).sum())
                stats["pixels"] += ours_t.numel()
            stats["tv_rule_mask_loss"].append((roi_ours["mask"].item(), captured["tv_rule"].item()))
            report.append(f"(mask with torchvision's own targets: {captured['tv_rule'].item():.8g})")
        else:
            assert "mask" not in roi_ours and "loss_mask" not in roi_tv
        print(f"[{arch} {idxs}] " + "; ".join(report))
        monkeypatch.undo()

    print(f"[{arch}] {stats['n_fg_anchors']} positive anchors, {stats['n_fg_rois']} positive RoIs")
    if mask_on:
        frac = stats["agree"] / stats["pixels"]
        print(f"[{arch}] mask targets: our polygon rule and torchvision's bitmap RoIAlign (>= 0.5) agree on "
              f"{frac:.4f} of {stats['pixels']} pixels")
        assert frac > 0.97, f"mask target rules agree on only {frac:.4f} of the pixels"
