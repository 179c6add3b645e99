"""Region Proposal Network: anchors, head, proposals and losses.

In:  feature maps ``list[(N, C, H_l, W_l)]`` (one per level: P2..P6 for FPN, res4 for C4), the
     images' (h, w) after resizing, and in training the GT boxes per image.
Out: proposals ``list[(P_i, 4)]`` per image (x1,y1,x2,y2 in resized-image pixels, detached) and,
     in training, the losses ``rpn_cls`` and ``rpn_box``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from .nn.precision import fp32_outputs
from .structures.boxes import BoxCoder, balanced_sample, batched_nms, clip_boxes, match_boxes, sizes_tensor

__all__ = ["AnchorGenerator", "RPNHead", "RPN", "SampledAnchors"]


class AnchorGenerator(nn.Module):
    """Anchors for each level, generated once per feature-map size and device, then cached.

    Level ``l`` has anchors of ``sizes[l]`` x ``ratios`` (ratio = h/w): the ``cells`` rule gives
    their shape around location (0, 0) (ratio-major, size-minor), the ``grid`` rule where they sit
    (gluon_rcnn/rules/anchors.py). The flattened order is location-major (as torchvision, so heads
    and weights are interchangeable).
    """

    def __init__(self, sizes: list[list[float]], ratios: list[float], strides: list[int], *, cells, grid):
        super().__init__()
        self.strides = list(strides)
        self.cells, self.grid = cells, grid
        self.cell_anchors = [cells(st, s, ratios) for s, st in zip(sizes, self.strides)]
        self._cache: dict = {}

    def num_anchors_per_location(self) -> int:
        counts = {len(c) for c in self.cell_anchors}
        assert len(counts) == 1, "the shared RPN head needs the same number of anchors on every level"
        return counts.pop()

    def forward(self, shapes: list[tuple[int, int]], device, image_shape=None) -> list[torch.Tensor]:
        """shapes: (H_l, W_l) per level; image_shape: the padded batch's (H, W) → list of
        (H_l*W_l*A, 4) float32 anchors."""
        traced = torch.compiler.is_compiling()  # export(): symbolic sizes, no int() and no cache
        shapes = [tuple(v if traced else int(v) for v in s) for s in shapes]
        key = (tuple(shapes), str(device), tuple(image_shape) if self.grid.needs_image_shape else None)
        out = None if traced else self._cache.get(key)
        if out is None:
            out = []
            for (h, w), stride, cell in zip(shapes, self.strides, self.cell_anchors):
                sh, sw = self.grid.steps(stride, (h, w), image_shape)
                # float64 cells are shifted in float64 on the CPU (as numpy computes them), then float32
                dev = "cpu" if cell.dtype == torch.float64 else device
                sx = torch.arange(w, dtype=cell.dtype, device=dev) * sw
                sy = torch.arange(h, dtype=cell.dtype, device=dev) * sh
                yy, xx = torch.meshgrid(sy, sx, indexing="ij")
                shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
                out.append((shifts + cell.to(dev)[None]).reshape(-1, 4).to(device=device, dtype=torch.float32))
            if traced:
                return out
            if len(self._cache) > 64:  # bounded: a few sizes per bucketed input shape
                self._cache.clear()
            self._cache[key] = out
        return out


class RPNHead(nn.Module):
    """conv3x3 + ReLU, then 1x1 convs for objectness (A) and box deltas (4A); shared by all levels."""

    def __init__(self, in_channels: int, num_anchors: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_channels
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.cls_logits = nn.Conv2d(hidden, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(hidden, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[torch.Tensor]):
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(fp32_outputs(self.cls_logits, t))  # float32 under inference autocast
            deltas.append(fp32_outputs(self.bbox_pred, t))
        return logits, deltas


def _flatten(logits: torch.Tensor, deltas: torch.Tensor):
    """(N, A, H, W), (N, 4A, H, W) → (N, H*W*A), (N, H*W*A, 4) in anchor order."""
    N, A, H, W = logits.shape
    logits = logits.permute(0, 2, 3, 1).reshape(N, -1)
    deltas = deltas.view(N, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 4)
    return logits, deltas


class RPN(nn.Module):
    """Anchors + head → proposals (and, in training, the RPN losses).

    Args:
        anchor_generator: an :class:`AnchorGenerator` (one entry per feature level).
        head: an :class:`RPNHead` (shared by every level).
        box_coder: encodes/decodes anchor deltas (``RPN.BBOX_REG_WEIGHTS``).
        per_level: FPN 'Level' mode: top-k and NMS on each level separately, then the best
            ``post_nms_topk`` over all levels; False: one top-k over all anchors ('Joint', C4).
        pre_nms_topk: ``(train, test)`` boxes kept before NMS (per level when ``per_level``).
        post_nms_topk: ``(train, test)`` proposals kept per image after NMS.
        nms_thresh: IoU of the proposal NMS.
        min_size: ``RPN.MIN_SIZE`` (pixels), the size ``small_proposals`` compares the clipped
            proposals' sides with.
        score_thresh: proposals with sigmoid(objectness) under this are dropped.
        fg_iou, bg_iou: anchor labelling: IoU >= fg_iou positive, < bg_iou negative, and each GT's
            best anchors (ties included) positive as well (low-quality matches, see ``low_quality``).
        batch_per_im, fg_ratio: anchors sampled per image for the losses, and the positive share.
        smooth_l1_beta: of the box loss (0 = L1).
        border_anchors: training only, the rule for anchors crossing the border of their image (its
            resized, unpadded size), ``RULES.BORDER_ANCHORS`` (rules/matching.py): labelled, or ignored
            (never sampled, no part in "each GT's best anchors", over all FPN levels at once).
            Proposals always use every anchor.
        low_quality: what happens to each GT's best anchors, ``RULES.LOW_QUALITY_MATCHES``
            (rules/matching.py).
        small_proposals: which clipped proposals are too small for NMS, ``RULES.PROPOSAL_MIN_SIZE``
            (rules/proposals.py: sides ``>= min_size`` kept, or ``> min_size``).
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, box_coder: BoxCoder, *, per_level: bool,
                 pre_nms_topk: tuple[int, int], post_nms_topk: tuple[int, int], nms_thresh: float,
                 min_size: float = 0.0, score_thresh: float = 0.0, fg_iou: float = 0.7, bg_iou: float = 0.3,
                 batch_per_im: int = 256, fg_ratio: float = 0.5, smooth_l1_beta: float = 1.0 / 9,
                 border_anchors, low_quality, small_proposals):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = box_coder
        self.per_level = bool(per_level)
        self.pre_topk = {True: int(pre_nms_topk[0]), False: int(pre_nms_topk[1])}
        self.post_topk = {True: int(post_nms_topk[0]), False: int(post_nms_topk[1])}
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)
        self.score_thresh = float(score_thresh)
        self.fg_thresh, self.bg_thresh = float(fg_iou), float(bg_iou)
        self.batch_per_im, self.fg_ratio = int(batch_per_im), float(fg_ratio)
        self.beta = float(smooth_l1_beta)
        self.border_anchors = border_anchors
        self.low_quality = low_quality
        self.small_proposals = small_proposals

    def forward(self, features: list[torch.Tensor], image_sizes: list[tuple[int, int]], targets=None,
                image_shape: tuple[int, int] | None = None):
        """image_shape: (H, W) of the padded batch (needed only by the stride_from_size anchor grid)."""
        logits, deltas = self.head(features)
        if image_shape is None:
            s = self.anchor_generator.strides[0]
            image_shape = (features[0].shape[-2] * s, features[0].shape[-1] * s)
        anchors = self.anchor_generator([f.shape[-2:] for f in features], features[0].device, image_shape)
        flat = [_flatten(l, d) for l, d in zip(logits, deltas)]
        obj = [f[0] for f in flat]
        dlt = [f[1] for f in flat]
        proposals = self._proposals([o.detach() for o in obj], [d.detach() for d in dlt], anchors, image_sizes)
        losses = {}
        if self.training:
            losses = self._losses(torch.cat(obj, 1), torch.cat(dlt, 1), torch.cat(anchors, 0), targets, image_sizes)
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, obj, dlt, anchors, image_sizes):
        """Top-k per level (or jointly), decode, clip, drop small (the ``small_proposals`` rule), NMS
        (per level), keep top-k."""
        N = obj[0].shape[0]
        pre = self.pre_topk[self.training]
        if self.per_level:
            sel_scores, sel_boxes, sel_levels = [], [], []
            for lvl, (o, d, a) in enumerate(zip(obj, dlt, anchors)):
                k = min(pre, o.shape[1])
                s, idx = o.topk(k, dim=1)
                sel_scores.append(s)
                sel_boxes.append(self.box_coder.decode(d.gather(1, idx[..., None].expand(-1, -1, 4)), a[idx]))
                sel_levels.append(torch.full_like(idx, lvl))
            scores, boxes, levels = torch.cat(sel_scores, 1), torch.cat(sel_boxes, 1), torch.cat(sel_levels, 1)
        else:
            o, d, a = torch.cat(obj, 1), torch.cat(dlt, 1), torch.cat(anchors, 0)
            k = min(pre, o.shape[1])
            scores, idx = o.topk(k, dim=1)
            boxes = self.box_coder.decode(d.gather(1, idx[..., None].expand(-1, -1, 4)), a[idx])
            levels = torch.zeros_like(idx)
        hw = sizes_tensor(image_sizes, boxes.device)
        boxes = clip_boxes(boxes, hw[:, None, :])
        probs = torch.sigmoid(scores.float())
        post = self.post_topk[self.training]
        out = []
        for i in range(N):  # NMS output sizes differ per image
            keep = self.small_proposals.keep(boxes[i], self.min_size) & (probs[i] >= self.score_thresh)
            b, p, lv = boxes[i][keep], probs[i][keep], levels[i][keep]
            k = batched_nms(b, p, lv, self.nms_thresh)[:post]
            out.append(b[k])
        return out

    def _losses(self, obj, dlt, anchors, targets, image_sizes):
        return self.loss(obj, dlt, self.sample_anchors(anchors, targets, image_sizes=image_sizes))

    @torch.no_grad()
    def label_anchors(self, anchors: torch.Tensor, gt: torch.Tensor, image_size: tuple[int, int] | None = None):
        """One image: ``(matched, label)``, (A,) index of each anchor's best GT and (A,) int8 label
        (1 positive, 0 negative, -1 ignored) under ``fg_iou``/``bg_iou`` and the ``low_quality`` and
        ``border_anchors`` rules (``image_size``: the (h, w) the border rule may need)."""
        iou = box_iou(anchors, gt) if gt.numel() else anchors.new_zeros((anchors.shape[0], 0))
        inside = self.border_anchors.inside(anchors, image_size)
        if inside is not None:
            # outside anchors are no candidates, not even as a GT's best anchor
            iou = torch.where(inside[:, None], iou, torch.full_like(iou, -1.0))
        matched, label = match_boxes(iou, self.fg_thresh, self.bg_thresh, allow_low_quality=True)
        label = self.low_quality(label, iou, self.bg_thresh)
        if inside is not None:
            label = torch.where(inside, label, torch.full_like(label, -1))
        return matched, label

    @torch.no_grad()
    def sample_anchors(self, anchors: torch.Tensor, targets, image_sizes=None) -> "SampledAnchors":
        """Label every anchor against each image's GT (:meth:`label_anchors`; ``image_sizes``, the
        resized unpadded (h, w) per image, is what the border rule reads), sample
        ``batch_per_im`` of them (``fg_ratio`` positive at most) and encode the positives'
        regression targets."""
        box_t, fg, valid, idxs = [], [], [], []
        for i, t in enumerate(targets):
            gt = t["boxes"].to(anchors.device)
            matched, lab = self.label_anchors(anchors, gt, None if image_sizes is None else tuple(image_sizes[i]))
            idx, is_fg, ok = balanced_sample(lab, self.batch_per_im, self.fg_ratio)
            idxs.append(idx)
            fg.append(is_fg)
            valid.append(ok)
            if gt.numel():
                box_t.append(self.box_coder.encode(gt[matched[idx]], anchors[idx]))
            else:
                box_t.append(anchors.new_zeros((idx.shape[0], 4)))
        fg = torch.stack(fg)
        # background anchors matched to a degenerate GT box would carry log(0) targets
        box_t = torch.where(fg[..., None], torch.stack(box_t), torch.zeros((), device=anchors.device))
        return SampledAnchors(torch.stack(idxs), fg, torch.stack(valid), box_t)

    def loss(self, obj: torch.Tensor, dlt: torch.Tensor, s: "SampledAnchors") -> dict[str, torch.Tensor]:
        """obj (N, A) logits and dlt (N, A, 4) deltas over all anchors → BCE over the sampled
        anchors and smooth-L1 over the positives, both divided by the number sampled."""
        o = obj.gather(1, s.index).float()
        d = dlt.gather(1, s.index[..., None].expand(-1, -1, 4)).float()
        valid = s.valid.float()
        denom = valid.sum().clamp(min=1)
        cls = (F.binary_cross_entropy_with_logits(o, s.fg.float(), reduction="none") * valid).sum() / denom
        box = (F.smooth_l1_loss(d, s.box_targets, beta=self.beta, reduction="none").sum(-1) * s.fg.float()).sum() / denom
        return {"rpn_cls": cls, "rpn_box": box}


@dataclass
class SampledAnchors:
    """The anchors sampled for the RPN losses, ``S = batch_per_im`` slots per image.

    index: int64 (N, S) anchor indices (into the concatenation of every level's anchors).
    fg: bool (N, S) positive slots.  valid: bool (N, S) slots that count (padding when an image
    has fewer labelled anchors than S).  box_targets: float (N, S, 4) encoded deltas, 0 off fg.
    """

    index: torch.Tensor
    fg: torch.Tensor
    valid: torch.Tensor
    box_targets: torch.Tensor

    def __post_init__(self):
        assert self.index.shape == self.fg.shape == self.valid.shape == self.box_targets.shape[:2], \
            "SampledAnchors fields must share their (N, S) shape"
