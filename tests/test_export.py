"""net.export(): a Mask R-CNN graph that runs without gluon_rcnn's classes and detects the same."""
import subprocess
import sys
import textwrap

import cv2
import torch

from conftest import COCO_IMAGES, need
from gluon_rcnn import get_model


def test_export_mask_rcnn_runs_without_gluon_rcnn(tmp_path):
    img_path = sorted(need(COCO_IMAGES).glob("*.jpg"))[0]
    img = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB)
    image = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    torch.manual_seed(0)
    # a small random model; score threshold 0 so that there are detections (and masks) to compare
    net = get_model("mask_rcnn_fpn_resnet18_v1b_coco", overrides=["PREPROC.TEST_SHORT_EDGE_SIZE=160",
                                                                   "PREPROC.MAX_SIZE=256",
                                                                   "TEST.RESULT_SCORE_THRESH=0.0"])
    with torch.no_grad():
        eager = net([image])[0]
    assert eager["boxes"].shape[0] > 0 and eager["masks"].shape[-2:] == image.shape[-2:]
    pt2 = tmp_path / "mask_rcnn.pt2"
    net.export(str(pt2), image)
    torch.save({"image": image, **{k: v for k, v in eager.items()}}, tmp_path / "ref.pt")
    # a fresh interpreter in which importing gluon_rcnn fails: only torch + torchvision ops
    code = textwrap.dedent(f"""
        import sys
        sys.modules["gluon_rcnn"] = None
        import torch, torchvision  # torchvision registers the nms / roi_align ops
        m = torch.export.load({str(pt2)!r}).module()
        ref = torch.load({str(tmp_path / 'ref.pt')!r}, weights_only=True)
        boxes, scores, labels, masks = m(ref["image"])
        assert torch.equal(labels, ref["labels"]), "labels differ"
        torch.testing.assert_close(boxes, ref["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(scores, ref["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(masks, ref["masks"], rtol=0, atol=1e-4)
        print("OK", boxes.shape[0])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("OK")
    assert int(r.stdout.split()[1]) == eager["boxes"].shape[0]
