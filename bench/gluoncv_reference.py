#!/usr/bin/env python
"""GluonCV's own outputs for seeded random R-CNN weights (runs in the side venv, NOT the project's).

Run through ``bench/gluoncv_reference.sh`` (which makes the venv: mxnet 1.9.1, gluoncv 0.10.5.post0,
numpy 1.23.5). For each model name it builds ``gluoncv.model_zoo.get_model(name, pretrained=False,
pretrained_base=False)``, initialises it, overwrites every parameter with :func:`spread`
(tests/gluoncv_weights.py, numpy ``RandomState(seed)``, parameters in sorted structural-name order: the names
``net.save_parameters`` writes; BN running mean/var, gamma and beta included), and on each image runs
GluonCV's own test transform (``presets.rcnn.load_test(file, short, max_size)``) and the net, in
inference. It writes, per (model, image), ``OUT/NAME_IMG.params`` (``net.save_parameters``),
``OUT/NAME_IMG.outputs.npz`` and ``OUT/NAME_IMG.meta.json``:

- ``input``: the transformed tensor (1,3,H,W), normalised RGB; ``resized_uint8``: the resized image
  before normalisation (HxWx3 uint8); ``orig_shape_hw``;
- ``c4``: ``net.features(x)`` (C4 nets), or ``p2``..``p6``: its five outputs (FPN nets);
- ``rpn_scores`` (1,1000,1), ``rpn_boxes`` (1,1000,4): ``net.rpn(zeros_like(x), c4)`` (its proposals);
- ``cls_pred`` (1000,81), ``box_pred`` (1000,80,4): the box head on those proposals, computed with the
  sub-blocks as ``FasterRCNN.hybrid_forward`` does (C4: ROIAlign 14x14, 1/16, sample_ratio 2 →
  top_features → global average pool; FPN: ``_pyramid_roi_feats`` → box_features; then
  class_predictor / box_predictor);
- ``ids``, ``scores``, ``bboxes`` [``masks``]: ``net(x)`` (Mask R-CNN: its 1000 best, masks 14x14
  probabilities of the detection's class);

The weights follow from (names, shapes, seed) alone: ``tests/test_convert_gluoncv.py`` draws them again
in numpy (the same function) and writes the ``.params`` file with gluon_rcnn's own writer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from gluoncv_weights import spread  # noqa: E402 - numpy only, shared with tests/test_convert_gluoncv.py


def run(name: str, image: str, out: str, seed: int, short: int | None, max_size: int | None,
        classifier_std: float | None = None) -> str:
    import mxnet as mx
    import gluoncv
    from gluoncv.data.transforms.presets import rcnn as presets

    mx.random.seed(seed)
    net = gluoncv.model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    net.initialize()
    short = short or net.short
    max_size = max_size or net.max_size
    x, orig = presets.load_test(image, short=short, max_size=max_size)
    net(x)  # materialise deferred shapes
    params = net._collect_params_with_prefix()
    shapes = {k: p.shape for k, p in params.items()}
    values = spread(shapes, seed, classifier_std)
    for k, v in values.items():
        assert params[k].shape == v.shape, (k, params[k].shape, v.shape)
        params[k].set_data(mx.nd.array(v, dtype="float32"))

    F = mx.nd
    res = {"input": x.asnumpy(), "resized_uint8": orig, "orig_shape_hw": np.asarray(mx.image.imread(image).shape[:2])}
    fpn = net.num_stages > 1
    with mx.autograd.predict_mode():
        feats = net.features(x)
        feats = list(feats) if isinstance(feats, (list, tuple)) else [feats]
        rpn_scores, rpn_boxes = net.rpn(F.zeros_like(x), *feats)
        n = rpn_boxes.shape[1]
        rois = F.concat(F.zeros((n, 1)), rpn_boxes.reshape((-1, 4)), dim=-1)
        if fpn:  # FasterRCNN.hybrid_forward: _pyramid_roi_feats, then box_features (no top_features)
            pooled = net._pyramid_roi_feats(F, feats, rois, net._roi_size, net._strides, roi_mode=net._roi_mode)
            box_feat = net.box_features(pooled)
        else:
            pooled = F.contrib.ROIAlign(feats[0], rois, net._roi_size, 1.0 / net._strides, sample_ratio=2)
            top = net.top_features(pooled)
            box_feat = F.contrib.AdaptiveAvgPooling2D(top, output_size=1)
        cls_pred = net.class_predictor(box_feat)
        box_pred = net.box_predictor(box_feat).reshape((n, net.num_class, 4))
        outs = net(x)
    if fpn:
        res.update({f"p{i + 2}": f.asnumpy() for i, f in enumerate(feats)})
    else:
        res["c4"] = feats[0].asnumpy()
    res.update(rpn_scores=rpn_scores.asnumpy(), rpn_boxes=rpn_boxes.asnumpy(),
               cls_pred=cls_pred.asnumpy(), box_pred=box_pred.asnumpy(),
               ids=outs[0].asnumpy(), scores=outs[1].asnumpy(), bboxes=outs[2].asnumpy())
    if len(outs) > 3:
        res["masks"] = outs[3].asnumpy()
    tag = f"_s{short}" + (f"m{max_size}" if max_size != net.max_size else "") + (f"_c{classifier_std:g}" if classifier_std else "")
    prefix = os.path.join(out, f"{name}_{os.path.splitext(os.path.basename(image))[0]}{tag}")
    net.save_parameters(prefix + ".params")
    np.savez_compressed(prefix + ".outputs.npz", **res)
    meta = {"name": name, "image": os.path.abspath(image), "seed": seed, "classifier_std": classifier_std,
            "short": short, "max_size": max_size,
            "mxnet": mx.__version__, "gluoncv_dist": _dist_version("gluoncv"), "numpy": np.__version__,
            "shapes": {k: list(s) for k, s in shapes.items()},
            "net": {"nms_thresh": net.nms_thresh, "nms_topk": net.nms_topk, "post_nms": net.post_nms,
                    "roi_size": list(net._roi_size), "strides": net._strides,
                    "rpn_test_post_nms": net._rpn_test_post_nms,
                    "clip": getattr(net.box_decoder, "_clip", None),
                    "rcnn_max_dets": getattr(net, "_rcnn_max_dets", None)}}
    with open(prefix + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    ok = res["ids"].reshape(-1) >= 0
    print(f"{prefix}: input {tuple(x.shape)}, {int(ok.sum())} detections, top score "
          f"{float(res['scores'].reshape(-1)[ok].max()) if ok.any() else 0:.3f}", flush=True)
    return prefix


def _dist_version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="+", default=["faster_rcnn_resnet50_v1b_coco", "mask_rcnn_resnet50_v1b_coco"])
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--short", type=int, default=None, help="default: the net's (800)")
    p.add_argument("--max-size", type=int, default=None, help="default: the net's (1333)")
    p.add_argument("--classifier-std", type=float, default=None,
                   help="std of class_predictor.weight (default: 16 x sqrt(1/fan_in), see gluoncv_weights.spread)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    for m in a.models:
        for img in a.images:
            run(m, img, a.out, a.seed, a.short, a.max_size, a.classifier_std)
    return 0


if __name__ == "__main__":
    sys.exit(main())
