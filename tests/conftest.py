import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
COCO128 = SHARED / "coco128"
MIRABEST = SHARED / "mirabest_fits"

# two cores in CI: one intra-op thread per process keeps multi-process tests from oversubscribing
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def need(path: Path):
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path
