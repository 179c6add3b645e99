"""The mask head's training targets: for each sampled RoI, an M x M target of the GT instance it
matched (the ROI heads' mask loss).

- ``"polygon_bins"`` (:class:`PolygonBins`): the instance's polygons rasterised at the centres of
  the RoI's M x M bins: binary targets.
- ``"bitmap_crop"`` (:class:`BitmapCrop`): the instance's full-image bitmap of the resized image
  (pycocotools, ``H x ceil(W/8)*8``: the width padded to a multiple of 8 to pack the bits, the
  extra columns 0 but inside the image for the sampling), bilinearly cropped to the RoI
  (``crop_and_resize`` with ``pad_border=False``): soft targets in [0, 1].

A choice is called as ``rule(targets, image_sizes, roi_image, roi_gt, fg, rois, M)``: the training
targets (dicts with ``boxes`` and ``polygons``, edges as ``data.transforms.polygons_to_edges`` packs
them), the resized images' ``(h, w)``, and per RoI (R of them) its image index and matched GT index
(int64), whether it is foreground (bool) and its (R, 4) box. It returns float32 (R, M, M); a RoI
that is not foreground gets a target of the right shape whose value does not count (weight 0).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..structures.masks import (crop_and_resize_rle, edges_to_polygons, polygons_to_rle_ends,
                                rasterize_polygons_in_boxes)

__all__ = ["PolygonBins", "BitmapCrop", "CHOICES"]


class PolygonBins:
    name = "polygon_bins"

    def __call__(self, targets, image_sizes, roi_image, roi_gt, fg, rois, M: int) -> torch.Tensor:
        # every image's instance outlines padded to one edge count, in one table; an image without
        # outlines gets zero rows (no edge: an empty target)
        E = max(t["polygons"].shape[1] if t["polygons"].numel() else 1 for t in targets)
        rows, starts, n = [], [], 0
        for t in targets:
            p = t["polygons"]
            rows.append(F.pad(p.float(), (0, 0, 0, E - p.shape[1])) if p.numel()
                        else rois.new_zeros((max(len(t["boxes"]), 1), E, 4)))
            starts.append(n)
            n += rows[-1].shape[0]
        edges = torch.cat(rows)[torch.tensor(starts, device=rois.device)[roi_image] + roi_gt]
        return rasterize_polygons_in_boxes(edges, rois, M)

    def __repr__(self) -> str:
        return "PolygonBins()"


class BitmapCrop:
    """Rasterised on the CPU (pycocotools) for each instance matched by a foreground RoI (and only
    those); each bitmap stays run-length encoded (``polygons_to_rle_ends``: no full-image buffer is
    decoded or copied to the device) and the crop reads it there (``crop_and_resize_rle``). On a GPU
    this costs one device-to-host copy of the RoIs' indices and the outlines per step."""

    name = "bitmap_crop"

    def __call__(self, targets, image_sizes, roi_image, roi_gt, fg, rois, M: int) -> torch.Tensor:
        device = rois.device
        R = rois.shape[0]
        img_c, gt_c, fg_c = torch.stack([roi_image, roi_gt, fg.long()]).cpu()
        fg_c = fg_c.bool()
        runs, sizes = [], []
        # table[i, g]: the bitmap of image i's instance g, -1 where no foreground RoI matched it
        table = torch.full((len(targets), max((t["polygons"].shape[0] for t in targets), default=0) + 1), -1,
                           dtype=torch.long)
        for i, t in enumerate(targets):
            if not t["polygons"].numel():
                continue
            h, w = int(image_sizes[i][0]), int(image_sizes[i][1])
            w8 = int(math.ceil(w / 8.0) * 8)
            edges = t["polygons"].cpu()
            for g in torch.unique(gt_c[(img_c == i) & fg_c]).tolist():
                table[i, g] = len(sizes)
                runs.append(torch.from_numpy(polygons_to_rle_ends(edges_to_polygons(edges[g]), h, w8)))
                sizes.append((h, w8))
        if not runs:
            return rois.new_zeros((R, M, M), dtype=torch.float32)
        ends = torch.full((len(runs), max(len(r) for r in runs)), torch.iinfo(torch.int64).max, dtype=torch.long)
        for b, r in enumerate(runs):
            ends[b, :len(r)] = r
        ids = table.to(device)[roi_image, roi_gt]
        ok = ids >= 0
        ids = ids.clamp(min=0)  # RoIs of no rasterised instance read bitmap 0; their targets are zeroed below
        hw = torch.tensor(sizes, dtype=torch.long).to(device)[ids]
        out = crop_and_resize_rle(ends.to(device), ids, hw[:, 0], hw[:, 1], rois, M)
        return out * ok[:, None, None].float()

    def __repr__(self) -> str:
        return "BitmapCrop()"


CHOICES = {"bitmap_crop": BitmapCrop(), "polygon_bins": PolygonBins()}
