import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
# 17 real COCO train2017 images (CC BY / CC BY-SA / no known copyright restrictions only) with their
# original annotations, shipped in the repository: tests/data/coco_subset/LICENSES.md says which and why
COCO_SUBSET = DATA / "coco_subset"
COCO_ANN = COCO_SUBSET / "annotations" / "instances_train2017.json"
COCO_IMAGES = COCO_SUBSET / "train2017"
COCO_SUBSET_IMAGES = 17  # images in COCO_ANN (16 with at least one non-crowd box)
# Real FIRST radio cutouts are NOT shipped: FIRST's terms allow reproduction only for scholarly,
# educational and private non-commercial use, and the folder's README forbids copying its files into
# the project. The tests that need them read them beside the checkout and say so when they are absent.
MIRABEST = REPO.parent / "shared" / "data" / "mirabest_fits"

# two cores in CI: one intra-op thread per process keeps multi-process tests from oversubscribing
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def need(path: Path) -> Path:
    """``path`` (test data shipped under tests/data): a missing file is a broken checkout, so the test
    fails naming it; it never skips."""
    if not path.exists():
        pytest.fail(f"test data {path} is missing: it ships with the repository under tests/data "
                    f"(a partial checkout or a deleted file?)", pytrace=False)
    return path


def need_first_fits(path: Path = MIRABEST) -> Path:
    """``path`` under the real FIRST cutouts beside the checkout (../shared/data/mirabest_fits), which
    cannot ship with the repository (see MIRABEST above): skips, saying why, where they are absent."""
    if not path.exists():
        pytest.skip(f"real FIRST FITS cutouts not found at {path}: FIRST data may not be redistributed "
                    f"in this repository (non-commercial terms), so these tests read them beside the checkout")
    return path
