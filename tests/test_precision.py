"""optimize_for_inference(precision='bf16'): autocast inference with the decoding layers in float32."""
import pytest
import torch

from gluon_rcnn import get_model
from gluon_rcnn.nn.precision import fp32_outputs


def test_fp32_outputs_only_under_inference_autocast():
    lin = torch.nn.Linear(8, 4).eval()
    x = torch.randn(3, 8)
    exact = lin(x)
    assert torch.equal(fp32_outputs(lin, x), exact)                       # no autocast: the layer itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16                            # what autocast alone gives
        y = fp32_outputs(lin, x)
        assert y.dtype == torch.float32 and torch.equal(y, exact)        # float32, not bf16-rounded
        lin.train()
        assert fp32_outputs(lin, x).dtype == torch.bfloat16              # training keeps autocast's choice


def test_bf16_mode_runs_in_bf16_and_returns_float32(tmp_path):
    torch.manual_seed(0)
    net = get_model("mask_rcnn_fpn_resnet18_v1b_coco", overrides=["PREPROC.TEST_SHORT_EDGE_SIZE=160",
                                                                   "PREPROC.MAX_SIZE=224"])
    seen = {}

    def record(key):
        def hook(module, inputs, output):
            seen.setdefault(key, output.dtype)  # returns None: the output is left alone
        return hook

    net.backbone.body.layer1.register_forward_hook(record("trunk"))
    net.roi_heads.stages[0].head.register_forward_hook(record("box head"))
    net.roi_heads.mask_head.convs.register_forward_hook(record("mask head"))
    net.roi_heads.stages[0].predictor.cls_score.register_forward_hook(record("logits"))
    net.roi_heads.score_thresh = 0.0  # an untrained net: let detections reach the mask head
    net.optimize_for_inference("bf16")
    img = torch.rand(3, 150, 200)
    with torch.inference_mode():
        out = net([img])[0]
    assert len(out["boxes"])
    assert seen == {"trunk": torch.bfloat16, "box head": torch.float32, "mask head": torch.bfloat16,
                    "logits": torch.float32}
    assert out["boxes"].dtype == out["scores"].dtype == out["masks"].dtype == torch.float32
    assert torch.isfinite(out["boxes"]).all()
    seen.clear()
    net.optimize_for_inference("bf16", fp32_box_head=False)  # the box head left to autocast
    with torch.inference_mode():
        out = net([img])[0]
    assert seen["box head"] == torch.bfloat16 and seen["logits"] == torch.float32
    with pytest.raises(ValueError, match="precision"):
        net.optimize_for_inference("int4")
    with pytest.raises(RuntimeError, match="export the model in fp32"):  # torch.export cannot reload autocast
        net.export(str(tmp_path / "bf16.pt2"), img)
    assert not (tmp_path / "bf16.pt2").exists()


def test_every_cascade_stage_fp32_and_plain_autocast_left_alone():
    """Cascade: every stage's box head runs in float32 under optimize_for_inference('bf16'); a model
    not optimised, evaluated under an outer autocast (eval.py --amp), keeps autocast's bf16 box head."""
    torch.manual_seed(0)
    over = ["PREPROC.TEST_SHORT_EDGE_SIZE=128", "PREPROC.MAX_SIZE=192", "FPN.CASCADE=True"]
    img = torch.rand(3, 120, 160)
    for optimise in (False, True):
        net = get_model("mask_rcnn_fpn_resnet18_v1b_coco", overrides=over).eval()
        assert len(net.roi_heads.stages) == 3
        seen = {}
        for k, stage in enumerate(net.roi_heads.stages):
            stage.head.register_forward_hook(lambda m, i, o, k=k: seen.setdefault(k, o.dtype) and None)
        if optimise:
            net.optimize_for_inference("bf16")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net([img])[0]
        want = torch.float32 if optimise else torch.bfloat16
        assert seen == {0: want, 1: want, 2: want}, (optimise, seen)
        assert out["boxes"].dtype == torch.float32
