#!/usr/bin/env python
"""detectron2's own outputs, stage by stage, for seeded R-CNN weights (runs in the side venv, NOT the project's).

Run through ``bench/detectron2_reference.sh`` (which builds detectron2 from its source for the CPU). For each
model-zoo config (e.g. ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``) it:

1. builds the model (``model_zoo.get_config_file``, ``MODEL.DEVICE='cpu'``) and draws its weights with
   :func:`detectron2_weights.spread` (tests/detectron2_weights.py, numpy ``RandomState(seed)``, the
   state-dict names in sorted order; FrozenBN statistics and affine, GN affine, every conv/linear);
2. writes them in the layout of detectron2's published zoo files: ``OUT/CONFIG.pkl`` =
   pickle of ``{"model": {name: numpy array}, "__author__": "Detectron2 Model Zoo"}`` (no
   ``matching_heuristics``: detection_checkpoint.py reads such a file as detectron2-native), and loads them back
   into the model through ``DefaultPredictor`` (``MODEL.WEIGHTS`` = that file: ``DetectionCheckpointer``);
3. on each image runs ``DefaultPredictor``'s steps (``read_image(..., 'BGR')``, its ``ResizeShortestEdge``
   test transform: 800 / 1333 by default, PIL bilinear on the uint8 image) and the model's inference, recording
   every stage with forward hooks on the unmodified modules.

Per (config, image) it writes ``OUT/PREFIX.outputs.npz`` and ``OUT/PREFIX.meta.json`` (PREFIX =
``<config name>_<image stem>_s<short edge>``; the weights file is shared by a config's images):

- ``resized_bgr`` (HxWx3 uint8, the transform's output), ``orig_shape_hw``, ``input`` (1,3,Hp,Wp: normalised
  BGR, padded to ``size_divisibility``);
- ``res2``..``res5`` (FPN: the bottom-up ResNet's outputs) or ``res4`` (C4); ``p2``..``p6`` (FPN);
- ``rpn_logits_<f>`` (1,A,H,W), ``rpn_deltas_<f>`` (1,4A,H,W) per RPN input feature, ``anchors_<f>`` (HWA,4);
- ``proposals`` (P,4), ``proposal_logits`` (P,): the RPN's output (resized-image pixels);
- ``stage<k>_boxes`` (the boxes the box pooler read for stage k), ``stage<k>_cls_logits`` (R,C+1; background
  last), ``stage<k>_deltas`` (R,4C or R,4): the box head and predictor on them (k = 0 only for one stage);
- ``boxes``, ``scores``, ``classes`` (0-based): the final detections in resized-image pixels;
  ``mask_logits`` (N,C,M,M, every class) on those boxes, ``mask_probs`` (N,M,M, the detection's class);
- ``boxes_orig``: the boxes after ``detector_postprocess`` (original pixels); ``masks_orig_bits``
  (np.packbits of the pasted (N,H0,W0) binary masks) and ``masks_orig_shape``.

meta: detectron2/torch/numpy versions, detectron2 commit, the config name, its full dumped config, the image,
seed, ``post_nms_topk_test`` (``--post-nms-topk``: fewer RoIs for the test references), and the state dict's
names and shapes (from which the weights follow: tests draw them again).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from detectron2_weights import input_std, spread  # noqa: E402 - numpy only, shared with tests/test_detectron2_reference.py

DEFAULT_CONFIGS = ["COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
                   "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml"]


def config_stem(config: str) -> str:
    return os.path.splitext(os.path.basename(config))[0]


def make_cfg(config: str, weights: str, short: int | None, max_size: int | None, post_nms_topk: int | None = None):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    if short:
        cfg.INPUT.MIN_SIZE_TEST = short
    if max_size:
        cfg.INPUT.MAX_SIZE_TEST = max_size
    if post_nms_topk:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_topk
    cfg.freeze()
    return cfg


def write_weights(config: str, out: str, seed: int) -> tuple[str, dict, dict, float]:
    """Draw the spread weights for ``config``'s state dict and write them as a zoo-format .pkl."""
    from detectron2.modeling import build_model
    cfg = make_cfg(config, "", None, None)
    model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    istd = input_std(cfg.MODEL.PIXEL_STD)
    values = spread(shapes, seed, istd)
    path = os.path.join(out, config_stem(config) + f"_seed{seed}.pkl")
    with open(path, "wb") as f:
        # the published files: protocol-2 pickles of numpy arrays under "model"
        pickle.dump({"model": values, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    return path, shapes, values, istd


class Recorder:
    """Forward hooks on the unmodified modules of a detectron2 GeneralizedRCNN."""

    def __init__(self, model):
        self.rec: dict = {"pooled_boxes": [], "stage_outputs": []}
        self.handles = []
        rh = model.roi_heads
        bb = model.backbone
        self._hook(getattr(bb, "bottom_up", bb), "trunk")
        if hasattr(bb, "bottom_up"):
            self._hook(bb, "fpn")
        pg = model.proposal_generator
        self._hook(pg.rpn_head, "rpn_head")
        self._hook(pg.anchor_generator, "anchors")
        self._hook(pg, "proposals")
        predictors = rh.box_predictor if isinstance(rh.box_predictor, (list, tuple)) or \
            rh.box_predictor.__class__.__name__ == "ModuleList" else [rh.box_predictor]
        for p in predictors:
            self.handles.append(p.register_forward_hook(lambda m, i, o: self.rec["stage_outputs"].append(o)))
        # the box pooler: its box lists, call by call (C4: Res5ROIHeads.pooler, shared by box and mask)
        pooler = getattr(rh, "box_pooler", None) or rh.pooler
        self.handles.append(pooler.register_forward_pre_hook(
            lambda m, args: self.rec["pooled_boxes"].append(args[1][0].tensor.clone())))
        if getattr(rh, "mask_on", False):
            self._hook(rh.mask_head.predictor, "mask_logits")

    def _hook(self, module, key):
        self.handles.append(module.register_forward_hook(lambda m, i, o: self.rec.__setitem__(key, o)))

    def remove(self):
        for h in self.handles:
            h.remove()


def run(config: str, weights: str, image: str, out: str, seed: int, short, max_size, values: dict, istd: float,
        post_nms_topk: int | None = None) -> str:
    import torch
    import detectron2
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN

    cfg = make_cfg(config, weights, short, max_size, post_nms_topk)
    pred = DefaultPredictor(cfg)  # builds the model, loads MODEL.WEIGHTS with DetectionCheckpointer, eval()
    model = pred.model
    state = model.state_dict()
    wrong = sorted(set(state) ^ set(values)) + [k for k in values if k in state and
                                                 not np.array_equal(state[k].numpy(), values[k])]
    if wrong:
        raise RuntimeError(f"DetectionCheckpointer did not load {weights} exactly: {wrong[:8]}")
    # DefaultPredictor.__call__, step by step (its input format is BGR)
    original = read_image(image, format=cfg.INPUT.FORMAT)
    resized = pred.aug.get_transform(original).apply_image(original)
    h0, w0 = original.shape[:2]
    inputs = [{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)), "height": h0, "width": w0}]
    rec = Recorder(model)
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        results = model.inference(inputs, do_postprocess=False)
        inst = results[0]
        raw = {"boxes": inst.pred_boxes.tensor.clone(), "scores": inst.scores.clone(), "classes": inst.pred_classes.clone()}
        # detector_postprocess scales pred_boxes in place (Boxes.scale): the raw boxes are cloned above
        post = GeneralizedRCNN._postprocess(results, inputs, images.image_sizes)[0]["instances"]
    rec.remove()
    r = rec.rec
    res = {"resized_bgr": np.ascontiguousarray(resized), "orig_shape_hw": np.asarray([h0, w0]),
           "input": images.tensor.numpy()}
    for k, v in r["trunk"].items():
        res[k] = v.numpy()
    if "fpn" in r:
        res.update({k: v.numpy() for k, v in r["fpn"].items()})
    in_feats = model.proposal_generator.in_features
    logits, deltas = r["rpn_head"]
    for f, lg, dl, an in zip(in_feats, logits, deltas, r["anchors"]):
        res[f"rpn_logits_{f}"], res[f"rpn_deltas_{f}"] = lg.numpy(), dl.numpy()
        res[f"anchors_{f}"] = an.tensor.numpy()
    props = r["proposals"][0][0]
    res["proposals"] = props.proposal_boxes.tensor.numpy()
    res["proposal_logits"] = props.objectness_logits.numpy()
    nstages = len(r["stage_outputs"])
    for k, (cls, dl) in enumerate(r["stage_outputs"]):
        res[f"stage{k}_boxes"] = r["pooled_boxes"][k].numpy()
        res[f"stage{k}_cls_logits"], res[f"stage{k}_deltas"] = cls.numpy(), dl.numpy()
    res.update({k: v.numpy() for k, v in raw.items()})
    res["boxes_orig"] = post.pred_boxes.tensor.numpy()
    if inst.has("pred_masks"):
        res["mask_logits"] = r["mask_logits"].numpy()
        res["mask_probs"] = inst.pred_masks[:, 0].numpy()
        m = post.pred_masks.numpy().astype(bool)
        res["masks_orig_bits"], res["masks_orig_shape"] = np.packbits(m.reshape(-1)), np.asarray(m.shape)
    prefix = os.path.join(out, f"{config_stem(config)}_{os.path.splitext(os.path.basename(image))[0]}"
                               f"_s{cfg.INPUT.MIN_SIZE_TEST}")
    np.savez_compressed(prefix + ".outputs.npz", **res)
    src = os.path.dirname(os.path.dirname(detectron2.__file__))
    commit = open(os.path.join(src, "COMMIT")).read().strip() if os.path.exists(os.path.join(src, "COMMIT")) else None
    meta = {"config": config, "image": os.path.abspath(image), "weights": os.path.abspath(weights), "seed": seed,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "post_nms_topk_test": cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
            "detectron2": detectron2.__version__, "detectron2_commit": commit, "torch": torch.__version__,
            "numpy": np.__version__, "stages": nstages, "input_std": istd, "cfg": cfg.dump(),
            "shapes": {k: list(v.shape) for k, v in values.items()}}
    with open(prefix + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{prefix}: input {tuple(images.tensor.shape)} (resized {resized.shape[:2]}), {len(res['proposals'])} "
          f"proposals, {len(inst)} detections, top score {float(inst.scores.max()) if len(inst) else 0:.3f}, "
          f"max |{list(r['trunk'])[-1]}| {float(np.abs(res[list(r['trunk'])[-1]]).max()):.3g}", flush=True)
    return prefix


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="model-zoo config files")
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "coco_subset",
                        "train2017")
    p.add_argument("--images", nargs="+", default=[os.path.join(here, f"{n:012d}.jpg") for n in (89, 436, 491)])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--short", type=int, default=None, help="INPUT.MIN_SIZE_TEST (default: the config's, 800)")
    p.add_argument("--max-size", type=int, default=None, help="INPUT.MAX_SIZE_TEST (default: the config's, 1333)")
    p.add_argument("--post-nms-topk", type=int, default=None,
                   help="MODEL.RPN.POST_NMS_TOPK_TEST (default: the config's, 1000; the test references: 200)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for c in a.configs:
        weights, _, values, istd = write_weights(c, a.out, a.seed)
        for img in a.images:
            run(c, weights, img, a.out, a.seed, a.short, a.max_size, values, istd, a.post_nms_topk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
