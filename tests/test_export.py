"""net.export(): one Mask R-CNN program for any image size (and uint8 or float 0-1 input) that loads
without gluon_rcnn and detects exactly what the eager model does, however many detections."""
import subprocess
import sys
import textwrap

import cv2
import pytest
import torch

from conftest import COCO_IMAGES, need
from gluon_rcnn import get_model

KEYS = ("boxes", "scores", "labels", "class_probs", "masks")
# (H, W): portrait and landscape, odd sides, one at the smallest side, one the resize leaves as it
# is (short edge 160, long edge under 256), ones the long-edge cap decides
SIZES = [(200, 300), (301, 217), (160, 200), (97, 401), (400, 255), (32, 57)]
DTYPES = (torch.uint8, torch.float32)


def _crop(image_u8: torch.Tensor, hw, dtype) -> torch.Tensor:
    x = image_u8[:, :hw[0], :hw[1]].contiguous()
    return x if dtype == torch.uint8 else x.float() / 255


@pytest.fixture(scope="module")
def exported(module_tmp):
    """A small random Mask R-CNN whose score threshold leaves some sweep images without detections
    and others with some; its eager outputs on every (size, dtype); one program per dtype, exported
    at the first size, saved and loaded back."""
    d = module_tmp("export")
    img = cv2.cvtColor(cv2.imread(str(sorted(need(COCO_IMAGES).glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    assert image.shape[1] >= 400 and image.shape[2] >= 401
    torch.manual_seed(0)
    net = get_model("mask_rcnn_fpn_resnet18_v1b_coco", overrides=["PREPROC.TEST_SHORT_EDGE_SIZE=160",
                                                                   "PREPROC.MAX_SIZE=256",
                                                                   "TEST.RESULT_SCORE_THRESH=0.0"]).eval()
    with torch.no_grad():  # random heads score every class alike: a threshold at the median top score
        tops = sorted(float(net([_crop(image, hw, torch.float32)])[0]["scores"].max()) for hw in SIZES)
    net.roi_heads.score_thresh = tops[len(tops) // 2 - 1]
    with torch.no_grad():
        eager = {(hw, dt): net([_crop(image, hw, dt)])[0] for hw in SIZES for dt in DTYPES}
    programs = {}
    for dt in DTYPES:
        path = d / f"mask_rcnn_{str(dt).split('.')[-1]}.pt2"
        net.export(str(path), _crop(image, SIZES[0], dt))
        programs[dt] = path
    return {"net": net, "image": image, "eager": eager, "paths": programs, "dir": d}


@pytest.mark.parametrize("dtype", DTYPES, ids=["uint8", "float32"])
def test_export_equals_eager_at_every_size(exported, dtype):
    program = torch.export.load(str(exported["paths"][dtype])).module()
    counts = []
    for hw in SIZES:
        x = _crop(exported["image"], hw, dtype)
        out, ref = program(x), exported["eager"][(hw, dtype)]
        assert isinstance(out, dict) and tuple(out) == KEYS == tuple(ref)
        for k in KEYS:  # the same program on the same numbers: bitwise
            assert out[k].dtype == ref[k].dtype and out[k].shape == ref[k].shape, (hw, k)
            assert torch.equal(out[k], ref[k]), (hw, k, (out[k].double() - ref[k].double()).abs().max())
        assert out["masks"].shape[-2:] == hw
        counts.append(out["boxes"].shape[0])
    # data-dependent output sizes: images without detections and images with some
    assert 0 in counts and max(counts) > 0, counts


def test_export_refuses_sizes_outside_its_range(exported):
    program = torch.export.load(str(exported["paths"][torch.float32])).module()
    max_side = exported["net"].export_max_side()
    assert max_side == 4 * 256
    with pytest.raises(Exception, match=r"\b32\b"):  # the program's own input check
        program(torch.rand(3, 31, 200))
    with pytest.raises(Exception, match=str(max_side)):
        program(torch.rand(3, 200, max_side + 1))
    with pytest.raises(ValueError, match=r"sides must lie in \[32, 1024\]"):
        exported["net"].export(str(exported["dir"] / "x.pt2"), torch.rand(3, 20, 200))
    with pytest.raises(ValueError, match="dtype"):
        exported["net"].export(str(exported["dir"] / "x.pt2"), torch.zeros(3, 200, 200, dtype=torch.int32))


def test_export_runs_without_gluon_rcnn(exported):
    """The saved program in a fresh interpreter in which importing gluon_rcnn fails (only torch and
    torchvision's ops), at two sizes, against the eager outputs."""
    d = exported["dir"]
    hws = [SIZES[1], SIZES[3]]
    ref = {f"{h}x{w}": exported["eager"][((h, w), torch.uint8)] for h, w in hws}
    torch.save({"images": {f"{h}x{w}": _crop(exported["image"], (h, w), torch.uint8) for h, w in hws},
                "eager": ref}, d / "ref.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["gluon_rcnn"] = None
        import torch, torchvision  # torchvision registers the nms / roi_align ops
        m = torch.export.load({str(exported["paths"][torch.uint8])!r}).module()
        ref = torch.load({str(d / 'ref.pt')!r}, weights_only=True)
        for key, image in ref["images"].items():
            out = m(image)
            for k, v in ref["eager"][key].items():
                assert torch.equal(out[k], v), (key, k)
            print(key, out["boxes"].shape[0])
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=d, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "OK"
    assert [int(line.split()[1]) for line in r.stdout.splitlines()[:-1]] == [v["boxes"].shape[0] for v in ref.values()]


def test_export_carries_every_block_hybridize_compiles(exported):
    """The program holds every block ``hybridize()`` compiles (backbone with FPN, RPN head, box
    stage, mask head), each with all its parameters, and detects what the hybridized model does
    (aot_eager: ATen's kernels, bitwise eager, tests/test_hybridize.py) bitwise."""
    import copy
    net = exported["net"]
    program = torch.export.load(str(exported["paths"][torch.float32]))
    held = set(program.state_dict) | set(getattr(program, "constants", {}))
    hybrid = copy.deepcopy(net).hybridize(backend="aot_eager")
    blocks = sorted(hybrid.compiled_backends())
    assert {"backbone", "rpn.head", "roi_heads.stages.0", "roi_heads.mask_head"} <= set(blocks)
    for block in blocks:
        names = [f"model.{block}.{n}" for n, _ in net.get_submodule(block).named_parameters()]
        assert names and all(n in held for n in names), (block, [n for n in names if n not in held][:5])
    loaded = program.module()
    with torch.no_grad():
        for hw in SIZES[:3]:
            x = _crop(exported["image"], hw, torch.float32)
            out, ref = loaded(x), hybrid([x])[0]
            for k in KEYS:
                assert torch.equal(out[k], ref[k]), (hw, k)


def test_export_refuses_bf16_with_the_reason(tmp_path):
    torch.manual_seed(0)
    net = get_model("mask_rcnn_fpn_resnet18_v1b_coco").optimize_for_inference("bf16")
    with pytest.raises(RuntimeError, match="bf16.*cannot load them back"):
        net.export(str(tmp_path / "bf16.pt2"), torch.zeros(3, 64, 64, dtype=torch.uint8))
