"""``hybridize()`` compiles every static block of the detector: backbone/FPN, RPN head, each box stage
(every stage of a Cascade R-CNN) and the mask head, with dynamic image sizes and RoI counts. After a
warm-up, a sweep of image sizes and RoI counts (0 and 1 included) compiles nothing more, and the
hybridized model detects (inference) and learns (losses, gradients) what the eager model does."""
import contextlib
import copy
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from gluon_rcnn import get_model
from gluon_rcnn.builders import build_model
from gluon_rcnn.config import get_default_config
from gluon_rcnn.structures.image_list import ImageList

KEYS = ("boxes", "scores", "labels", "class_probs", "masks")
SMALL_PREPROC = ["PREPROC.TEST_SHORT_EDGE_SIZE=160", "PREPROC.MAX_SIZE=256"]

# CPU convolutions choose their kernel (and output layout) by the size of their input, in eager mode
# too, and the compiled program keeps that choice as a guard: these sizes fall on both sides of
# the one threshold they cross (the stride-16 maps of a resized 64 x 256 image are below it), so
# the warm-up is one image on each side
WARMUP = [(200, 300), (97, 401)]
SWEEP = [(301, 217), (160, 200), (400, 255), (64, 57), (120, 410), (250, 250)] + WARMUP
KEEP = [0, 1, 3, 17, None]  # detections per sweep image (None: as many as the model gives)

SMALL_TRAIN = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "DATA.NUM_CATEGORY=3", "FPN.NUM_CHANNEL=32",
               "FPN.FRCNN_FC_HEAD_DIM=64", "FPN.FRCNN_CONV_HEAD_DIM=32", "MRCNN.HEAD_DIM=32", "RPN.HEAD_DIM=64",
               "PREPROC.TRAIN_SHORT_EDGE_SIZE=[96,96]", "PREPROC.TEST_SHORT_EDGE_SIZE=96", "PREPROC.MAX_SIZE=160",
               "FRCNN.BATCH_PER_IM=64", "RPN.TRAIN_PER_LEVEL_NMS_TOPK=200", "RPN.TEST_PER_LEVEL_NMS_TOPK=100",
               "MODE_MASK=True"]
TRAIN_VARIANTS = {"mask_fpn": [], "cascade_mask_fpn": ["FPN.CASCADE=True"], "mask_c4": ["MODE_FPN=False"]}


def _cfg(variant, extra=()):
    c = get_default_config()
    c.update_args(SMALL_TRAIN + TRAIN_VARIANTS[variant] + list(extra))
    return c.finalize()


@contextlib.contextmanager
def no_new_graphs():
    """Fails if anything is compiled inside: a recompilation raises (``error_on_recompile``), and
    the count of compiled graphs (which a first compilation of a new frame also raises) stays."""
    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield
    assert counters["stats"]["unique_graphs"] == before, \
        f"{counters['stats']['unique_graphs'] - before} graph(s) compiled after the warm-up"


def _image():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(3, 420, 420, generator=g) * 255).to(torch.uint8)


def _crop(image, hw):
    return image[:, :hw[0], :hw[1]].contiguous()


def _record_counts(eager):
    """RoI counts the eager twin's box stages and mask head see (the hybridized model computes the
    same, bitwise, up to those heads)."""
    counts = {"box": [], "mask": []}
    eager.roi_heads.stages[0].register_forward_pre_hook(lambda m, a: counts["box"].append(a[0].shape[0]))
    if eager.roi_heads.mask_head is not None:
        eager.roi_heads.mask_head.register_forward_pre_hook(lambda m, a: counts["mask"].append(a[0].shape[0]))
    return counts


def _thresholds(net, image):
    """Per sweep size, the score threshold that leaves exactly the KEEP detections: half way
    between the k-th and the (k+1)-th score of a run at threshold 0 (``select_detections`` keeps
    scores above the threshold; half way, so that rounding cannot move a detection across it)."""
    net.roi_heads.score_thresh = 0.0
    out = {}
    with torch.no_grad():
        for hw, k in zip(SWEEP, KEEP * 2):
            s = net([_crop(image, hw)])[0]["scores"].sort(descending=True).values.tolist()
            out[hw] = 0.0 if k is None or k >= len(s) else (s[k] + (s[k - 1] if k else 1.0)) / 2
    return out


def _assert_same_detections(out, ref, bitwise, hw):
    assert tuple(out) == KEYS == tuple(ref)
    for k in KEYS:
        if bitwise:
            assert torch.equal(out[k], ref[k]), f"{hw}: {k} differs"
        else:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{hw} {k}: {m}")


def _inference_sweep(net, eager, image, bitwise):
    thresholds = _thresholds(eager, image)
    counts = _record_counts(eager)
    net.roi_heads.score_thresh = 0.0  # detections, so that the warm-up runs the mask head
    with torch.no_grad():
        for hw in WARMUP:
            assert len(net([_crop(image, hw)])[0]["boxes"]) > 0
        with no_new_graphs():
            for hw in SWEEP:
                net.roi_heads.score_thresh = eager.roi_heads.score_thresh = thresholds[hw]
                ref, out = eager([_crop(image, hw)])[0], net([_crop(image, hw)])[0]
                _assert_same_detections(out, ref, bitwise, hw)
    # the sweep did change the RoI counts of the box head(s) and the mask head, 0 and 1 included
    # (no detection: the mask head is not called, as in eager mode)
    assert len(set(counts["box"])) >= 4, counts["box"]
    assert {1, 3, 17} <= set(counts["mask"]) and len(set(counts["mask"])) >= 4, counts["mask"]
    return counts


# the zoo's R18 FPN sweep (~30 s on 2 cores) runs in `make slow`; the cascade sweep (standard box head
# stages and the mask head, the same mechanism) stays in `make test`
@pytest.mark.parametrize("kind", [pytest.param("mask_fpn", marks=pytest.mark.slow), "cascade_mask_fpn"])
def test_hybridized_inference_sweep_compiles_once_and_detects_as_eager(kind):
    """aot_eager (the same ATen kernels as eager mode): bitwise the eager detections. Mask R-CNN:
    the zoo's ResNet-18 FPN entry; Cascade: a small one of three stages."""
    torch.manual_seed(0)
    if kind == "mask_fpn":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights
            eager = get_model("mask_rcnn_fpn_resnet18_v1b_coco", overrides=SMALL_PREPROC).eval()
    else:
        eager = build_model(_cfg(kind, SMALL_PREPROC)).eval()
    net = copy.deepcopy(eager).hybridize(backend="aot_eager")
    stages = [f"roi_heads.stages.{k}" for k in range(len(net.roi_heads.stages))]
    assert len(stages) == (3 if kind.startswith("cascade") else 1)
    assert set(net.compiled_backends()) == {"backbone", "rpn.head", *stages, "roi_heads.mask_head"}
    _inference_sweep(net, eager, _image(), bitwise=True)


TRAIN_SIZES = [[(96, 128), (80, 120)], [(96, 160), (64, 96)], [(72, 160), (96, 96)], [(96, 112), (96, 144)]]


def _train_batch(step):
    """Two images already at their training size, with 1 to 4 boxes each (and their polygons)."""
    g = torch.Generator().manual_seed(step)
    sizes = TRAIN_SIZES[step]
    images, targets = [], []
    for h, w in sizes:
        images.append((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8))
        n = int(torch.randint(1, 5, (1,), generator=g))
        wh = 12 + torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2])
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        x1, y1, x2, y2 = (*xy.unbind(1), *(xy + wh).unbind(1))
        edges = torch.stack([torch.stack([x1, y1, x2, y1], 1), torch.stack([x2, y1, x2, y2], 1),
                             torch.stack([x2, y2, x1, y2], 1), torch.stack([x1, y2, x1, y1], 1)], 1)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 4, (n,), generator=g),
                        "polygons": edges})
    return ImageList(images, sizes, sizes), targets


def _train_step(m, step):
    images, targets = _train_batch(step)
    torch.manual_seed(100 + step)  # the same RoI sample for both models
    losses = m(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return losses, grads


def _training_sweep(net, eager, bitwise):
    counts = _record_counts(eager)
    net.train()
    eager.train()
    check = (lambda a, b, what: torch.testing.assert_close(a, b, rtol=0, atol=0, msg=what)) if bitwise else \
        (lambda a, b, what: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=what))
    _train_step(net, 0)  # warm-up
    with no_new_graphs():
        for step in range(len(TRAIN_SIZES)):
            (loss, grad), (ref_loss, ref_grad) = _train_step(net, step), _train_step(eager, step)
            assert loss.keys() == ref_loss.keys() and grad.keys() == ref_grad.keys()
            for k in ref_loss:
                check(loss[k], ref_loss[k], f"step {step}: loss {k}")
            for k in ref_grad:
                check(grad[k], ref_grad[k], f"step {step}: gradient of {k}")
    assert len(set(counts["mask"])) >= 3, counts["mask"]  # the positives the mask head trains on


# C4 (~20 s on 2 cores) runs in `make slow`; FPN training and the C4 path's inference stay in `make test`
@pytest.mark.parametrize("variant", ["mask_fpn", pytest.param("mask_c4", marks=pytest.mark.slow)])
def test_hybridized_training_compiles_once_and_learns_as_eager(variant):
    """aot_eager: losses and every gradient bitwise those of eager mode, over steps of different
    image sizes and RoI counts; C4 (res5 box head whose features feed the mask head) included."""
    torch.manual_seed(0)
    eager = build_model(_cfg(variant)).train()
    net = copy.deepcopy(eager).hybridize(backend="aot_eager")
    if variant == "mask_c4":
        assert set(net.compiled_backends()) == {"backbone", "rpn.head", "roi_heads.stages.0.head.res5",
                                                "roi_heads.stages.0.predictor", "roi_heads.mask_head"}
    _training_sweep(net, eager, bitwise=True)


def test_heads_inductor_cascade_inference_and_training():
    """The default backend (inductor) on a Cascade R-CNN's heads (three box stages, mask head): no
    recompilation over image sizes and RoI counts, the detections, losses and gradients of eager
    mode within float rounding (inductor generates its own kernels for the elementwise work around
    the matrix products and convolutions, fused bias, ReLU, normalisation, which round differently
    from ATen's)."""
    torch.manual_seed(0)
    eager = build_model(_cfg("cascade_mask_fpn", SMALL_PREPROC)).eval()
    net = copy.deepcopy(eager)
    net.roi_heads.hybridize()  # the default backend, as net.hybridize() uses
    assert set(net.compiled_backends()) == {"roi_heads.stages.0", "roi_heads.stages.1", "roi_heads.stages.2",
                                            "roi_heads.mask_head"}
    assert set(net.compiled_backends().values()) <= {"inductor", "aot_eager"}  # aot_eager: no C compiler
    _inference_sweep(net, eager, _image(), bitwise=False)
    _training_sweep(net, eager, bitwise=False)


def test_channels_last_heads_compile_with_backed_counts():
    """A channels_last mask head (as ``optimize_for_inference()`` makes it) gets a backed RoI count:
    on an unbacked one torch takes a convolution's output to be contiguous while the CPU kernel
    writes channels_last (its 1x1 predictor's weight even passes ``is_contiguous()``), which failed
    inductor's stride checks at run time."""
    torch.manual_seed(0)
    eager = build_model(_cfg("mask_fpn")).eval().roi_heads.mask_head.to(memory_format=torch.channels_last)
    assert eager.predictor.weight.is_contiguous()  # what makes it easy to miss
    heads = build_model(_cfg("mask_fpn")).eval().roi_heads
    heads.mask_head = copy.deepcopy(eager)
    heads.hybridize()
    with torch.no_grad():
        for n in (5, 1, 20):
            x = torch.randn(n, 32, 14, 14)
            torch.testing.assert_close(heads.mask_head(x), eager(x), rtol=1e-5, atol=1e-5)


# ~90 s each on 2 cores (inductor compiles the whole detector): `make slow`
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_optimized_and_frozen_sweep_compiles_once_and_detects_as_the_optimized_eager_model(precision):
    """``optimize_for_inference`` (channels_last, folded norms, the gather RoIAlign, the selected mask
    channel) then ``hybridize(freeze=True)`` (inductor, parameters as constants, fused
    elementwise kernels): after a warm-up over both convolution regimes and the three RoI-count regimes of
    channels_last heads (backed counts: 1, 2-15, 16 and more, where the CPU convolution changes kernel),
    the size sweep compiles nothing more and detects what the optimized eager
    model does within float rounding (fp32: inductor's fused kernels round differently from ATen's;
    bf16: the same kernels on the same bf16 values)."""
    torch.manual_seed(0)
    eager = build_model(_cfg("cascade_mask_fpn", SMALL_PREPROC)).eval().optimize_for_inference(precision)
    net = copy.deepcopy(eager).hybridize(freeze=True)
    assert set(net.compiled_backends().values()) <= {"inductor", "aot_eager"}
    image = _image()
    thresholds = _thresholds(eager, image)
    with torch.no_grad():
        for hw in WARMUP:
            for keep in (1, 3, None):  # RoI counts: 1, under the kernel switch (16), many
                eager.roi_heads.score_thresh = 0.0
                s = eager([_crop(image, hw)])[0]["scores"].sort(descending=True).values
                net.roi_heads.score_thresh = float(s[keep] + s[keep - 1]) / 2 if keep else 0.0
                n = len(net([_crop(image, hw)])[0]["boxes"])
                assert n == keep if keep else n >= 16
        with no_new_graphs():
            for hw in SWEEP:
                net.roi_heads.score_thresh = eager.roi_heads.score_thresh = thresholds[hw]
                ref, out = eager([_crop(image, hw)])[0], net([_crop(image, hw)])[0]
                assert out["boxes"].shape == ref["boxes"].shape, hw
                for k in KEYS:
                    torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{hw} {k}: {m}")



# training batches (already padded to 32, as the backbone takes them); each side >= 96, so no map down
# to P6 is 1 pixel wide (a size of 1 is a regime of its own, as in eager mode's kernels)
BACKBONE_SIZES = [(256, 320), (192, 256), (160, 224), (128, 96), (224, 320)]


# ResNet-18-FPN with the tensorpack profile (the default config: RULES.FLOOR_STRIDE2) ~30 s in `make test`;
# ResNet-50-FPN with torchvision's rules ~45 s, `make slow`
BACKBONE_TRAIN = {"r18_tensorpack": [],
                  "r50_torchvision": ["BACKBONE.RESNET_NUM_BLOCKS=[3,4,6,3]", "RULES.PROFILE='torchvision'"]}


@pytest.mark.parametrize("trunk", ["r18_tensorpack", pytest.param("r50_torchvision", marks=pytest.mark.slow)])
def test_inductor_training_of_the_optimized_backbone_compiles_once_over_image_sizes(trunk):
    """The default backend (inductor) trains the backbone/FPN after ``optimize_for_training`` (frozen BN
    inside the convolutions, channels_last: what ``--fast-step`` trains) with symbolic image sizes:
    after a warm-up on two sizes, batches of three other sizes compile nothing more, and features and
    gradients are eager mode's within float rounding. torch 2.14 lowered a convolution's backward with
    its input gradient's strides fixed as integers, a new training graph per image size, unless the
    graph is layout-optimised (``_CompiledCall`` forces that); and it could not compile the no-op crop
    of ``RULES.FLOOR_STRIDE2`` on inputs that are multiples of 32 (the trunk now skips it there)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = build_model(_cfg("mask_fpn", BACKBONE_TRAIN[trunk])).train().optimize_for_training()
    net = copy.deepcopy(eager)
    net.backbone.hybridize()

    def step(m, hw):
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(hw[0] * 1000 + hw[1]))
        feats = m.backbone(x.contiguous(memory_format=torch.channels_last))
        w = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))) for k, v in feats.items()}
        sum((v * w[k]).sum() for k, v in feats.items()).backward()
        grads = {n: p.grad.clone() for n, p in m.backbone.named_parameters() if p.grad is not None}
        m.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in feats.items()}, grads

    for hw in BACKBONE_SIZES[:2]:  # warm-up: the two regimes of the CPU convolutions
        step(net, hw)
    assert net.compiled_backends() == {"backbone": "inductor"}  # not the aot_eager safety net
    with no_new_graphs():
        for hw in BACKBONE_SIZES[2:]:
            (feats, grads), (ref_feats, ref_grads) = step(net, hw), step(eager, hw)
            assert feats.keys() == ref_feats.keys() and grads.keys() == ref_grads.keys() and grads
            for k in ref_feats:
                torch.testing.assert_close(feats[k], ref_feats[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{hw} {k}: {m}")
            for k in ref_grads:  # sums over a whole batch of maps: relative to the largest entry
                tol = 1e-5 * max(1.0, float(ref_grads[k].abs().max()))
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=tol, msg=lambda m: f"{hw} {k}: {m}")
