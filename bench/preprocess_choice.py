"""The two RULES.RESAMPLE choices (docs/architecture.md): their speed and their difference after
normalisation, on coco128 images at 800 px, and the uint8 rule against OpenCV itself.
Run: python bench/preprocess_choice.py"""
import time, glob, cv2, numpy as np, torch
from gluon_rcnn.preprocess import Preprocessor, scaled_size
from gluon_rcnn.data.image_io import read_image
from gluon_rcnn.profiles import get_profile
import os
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data', 'coco128')
files = sorted(glob.glob(os.path.join(ROOT, 'train2017', '*.jpg')))[:32]
imgs = [read_image(f) for f in files]
mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
rules = get_profile("tensorpack").rules()  # round-to-nearest sizes, as scaled_size below


def _pre(resample):
    return Preprocessor(mean, std, 800, 1333, 32, resize=rules.resize, resample=resample,
                        mask_paste=rules.mask_paste, rescale_boxes=rules.rescale_boxes)


pre_float = _pre(get_profile("tensorpack").rules(RESAMPLE="float_bilinear").resample)
pre_uint8 = _pre(rules.resample)
torch.set_num_threads(2)
def torch_path(img):
    t = torch.from_numpy(img.transpose(2, 0, 1).copy())
    return pre_float([t]).tensor
def uint8_rule_path(img):
    t = torch.from_numpy(img.transpose(2, 0, 1).copy())
    return pre_uint8([t]).tensor
def cv2_path(img):
    h, w = img.shape[:2]; nh, nw = scaled_size(h, w, 800, 1333)
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(r.transpose(2, 0, 1).copy()).float()
    return (t - torch.tensor(mean).view(3,1,1)) / torch.tensor(std).view(3,1,1)
import statistics
paths = [("float_bilinear (Preprocessor)", torch_path), ("uint8_fixed_point (Preprocessor)", uint8_rule_path),
         ("cv2 uint8 + normalise", cv2_path)]
for _, fn in paths:
    fn(imgs[0])
times = {name: [] for name, _ in paths}
for _ in range(7):  # alternating rounds: a busy machine slows both alike
    for name, fn in paths:
        t0 = time.perf_counter()
        for im in imgs:
            fn(im)
        times[name].append((time.perf_counter() - t0) / len(imgs))
for name, ts in times.items():
    print(f"{name}: median {statistics.median(ts) * 1000:.1f} ms per image (min {min(ts) * 1000:.1f}, max "
          f"{max(ts) * 1000:.1f}; 7 rounds of 32 coco128 images to ~800x1067, {torch.get_num_threads()} threads)")
diff = same = 0
for im in imgs:
    u = uint8_rule_path(im)[0]; c = cv2_path(im)
    same = max(same, float((u[:, :c.shape[1], :c.shape[2]] - c).abs().max()))
    a = torch_path(im)[0]; b = cv2_path(im)
    diff = max(diff, float((a[:, :b.shape[1], :b.shape[2]] - b).abs().max()))
print(f"max |float_bilinear - cv2| after normalisation over {len(imgs)} images: {diff:.4f}")
print(f"max |uint8_fixed_point - cv2| after normalisation over {len(imgs)} images: {same:.4g}")
