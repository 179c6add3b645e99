"""Pairing of two detectors' outputs, torchvision models with random frozen-BN statistics and the
images they take: the yardstick of tests/test_torchvision_equivalence.py,
tests/test_zoo_pretrained_torchvision.py and bench/equivalence_torchvision.py (which puts tests/ on
``sys.path`` to import this module)."""
from __future__ import annotations

import torch

__all__ = ["match_detections", "compare_detections", "summarize", "randomize_frozen_bn", "build_torchvision",
           "load_rgb01", "BOX_TOL", "SCORE_TOL", "MASK_TOL"]

BOX_TOL = 1e-3    # px, in the original image
SCORE_TOL = 1e-5
MASK_TOL = 1e-3   # mask probabilities


def match_detections(a: dict, b: dict, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL):
    """Pair detections ``a`` (torchvision) with ``b`` (ours) one to one, ignoring their order.

    Two detections are a candidate pair when their labels are equal, every box coordinate is
    within ``box_tol`` and the scores are within ``score_tol``. Among the candidate pairs a
    maximum one-to-one pairing is taken (Hungarian assignment on cost box-diff + score-diff, with
    non-candidates forbidden), so detections whose scores tie — whose order in the two lists is
    arbitrary — pair correctly, and nothing outside the tolerances is ever paired.

    Returns ``(ia, ib, unpaired_a, unpaired_b)``: index tensors of the pairs and of the detections
    of each side that found no partner."""
    from scipy.optimize import linear_sum_assignment

    na, nb = int(a["scores"].numel()), int(b["scores"].numel())
    empty = torch.zeros(0, dtype=torch.long)
    if na == 0 or nb == 0:
        return empty, empty, torch.arange(na), torch.arange(nb)
    box_d = (a["boxes"].double()[:, None, :] - b["boxes"].double()[None, :, :]).abs().amax(-1)
    score_d = (a["scores"].double()[:, None] - b["scores"].double()[None, :]).abs()
    ok = (a["labels"][:, None] == b["labels"][None, :]) & (box_d <= box_tol) & (score_d <= score_tol)
    # a forbidden pair costs more than all allowed pairs together: the assignment maximises the
    # number of allowed pairs first, then minimises their total difference
    forbidden = 1.0 + float(min(na, nb)) * (box_tol + score_tol) * 2
    cost = torch.where(ok, box_d + score_d, torch.full_like(box_d, forbidden))
    r, c = linear_sum_assignment(cost.numpy())
    r, c = torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)
    keep = ok[r, c]
    ia, ib = r[keep], c[keep]
    un_a = torch.ones(na, dtype=torch.bool)
    un_a[ia] = False
    un_b = torch.ones(nb, dtype=torch.bool)
    un_b[ib] = False
    return ia, ib, un_a.nonzero().flatten(), un_b.nonzero().flatten()


def compare_detections(a: dict, b: dict, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL,
                       chunk: int = 16) -> dict:
    """Statistics of one image's pairing: counts, largest differences over the pairs (boxes in
    px, scores, masks), unpaired detections (with their scores), mask shape agreement."""
    a = {k: v.detach().cpu() for k, v in a.items()}
    b = {k: v.detach().cpu() for k, v in b.items()}
    ia, ib, ua, ub = match_detections(a, b, box_tol, score_tol)
    s = {"n_tv": int(a["scores"].numel()), "n_ours": int(b["scores"].numel()), "pairs": int(ia.numel()),
         "unpaired_tv": ua.tolist(), "unpaired_ours": ub.tolist(),
         "unpaired_tv_scores": a["scores"][ua].tolist(), "unpaired_ours_scores": b["scores"][ub].tolist(),
         "box": 0.0, "score": 0.0, "mask": None, "mask_shape_ok": True}
    if ia.numel():
        s["box"] = float((a["boxes"][ia].double() - b["boxes"][ib].double()).abs().max())
        s["score"] = float((a["scores"][ia].double() - b["scores"][ib].double()).abs().max())
    if "masks" in a or "masks" in b:
        s["mask_shape_ok"] = ("masks" in a and "masks" in b
                              and tuple(a["masks"].shape[1:]) == tuple(b["masks"].shape[1:])
                              and a["masks"].shape[0] == s["n_tv"] and b["masks"].shape[0] == s["n_ours"])
        m = 0.0
        if s["mask_shape_ok"]:
            for k in range(0, int(ia.numel()), chunk):
                d = (a["masks"][ia[k:k + chunk]] - b["masks"][ib[k:k + chunk]]).abs().max()
                m = max(m, float(d))
        s["mask"] = m
    return s


def summarize(stats: list[dict]) -> dict:
    """Totals and maxima over many images' :func:`compare_detections` results."""
    masks = [s["mask"] for s in stats if s["mask"] is not None]
    return {"images": len(stats), "n_tv": sum(s["n_tv"] for s in stats), "n_ours": sum(s["n_ours"] for s in stats),
            "pairs": sum(s["pairs"] for s in stats),
            "unpaired": sum(len(s["unpaired_tv"]) + len(s["unpaired_ours"]) for s in stats),
            "box": max((s["box"] for s in stats), default=0.0), "score": max((s["score"] for s in stats), default=0.0),
            "mask": max(masks) if masks else None,
            "mask_shape_ok": all(s["mask_shape_ok"] for s in stats)}


def randomize_frozen_bn(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every FrozenBatchNorm2d random (but sane) statistics and affine parameters, so that the
    frozen normalisation really acts (torchvision's freshly built ones are the identity)."""
    from torchvision.ops import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model


def build_torchvision(arch: str, short: int = 800, max_size: int = 1333, seed: int = 0, **kwargs):
    """torchvision's ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` with seeded random
    weights, random frozen-BN statistics and ``box_score_thresh=0`` (unless given), in eval mode."""
    from torchvision.models import detection

    builder = {"mask": detection.maskrcnn_resnet50_fpn, "faster": detection.fasterrcnn_resnet50_fpn}[arch]
    torch.manual_seed(seed)
    kwargs.setdefault("box_score_thresh", 0.0)
    tv = builder(weights=None, weights_backbone=None, min_size=short, max_size=max_size, **kwargs)
    return randomize_frozen_bn(tv, seed + 1).eval()


def load_rgb01(path) -> torch.Tensor:
    """(3, H, W) float32 RGB in 0-1, what torchvision's detection models take."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float().div_(255.0)
