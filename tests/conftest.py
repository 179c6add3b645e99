import os
import shutil
import tempfile
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


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``module_tmp(name)``: a new folder for a module-scoped fixture's files. pytest's
    ``tmp_path_retention_policy = "failed"`` (pyproject.toml) removes a passed test's ``tmp_path`` at
    once but keeps module folders until the session ends; these are removed when their module ends
    instead, unless one of its tests failed (then they are kept for a look, as a failed test's are). The
    suite writes about 4 GB of checkpoints in all; this keeps its peak on disk under 1 GB."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed = request.session.testsfailed
    yield lambda name: Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    if request.session.testsfailed == failed and request.config.getini("tmp_path_retention_policy") == "failed":
        shutil.rmtree(root, ignore_errors=True)


def _free_tmp() -> tuple[str, float]:
    tmp = tempfile.gettempdir()
    return tmp, shutil.disk_usage(tmp).free / 2**30


def pytest_report_header(config):
    """How much room the temporary files have (shown without ``-q``)."""
    tmp, free = _free_tmp()
    return f"temporary files in {tmp}: {free:.1f} GiB free"


def pytest_sessionstart(session):
    """A warning, also under ``-q``, when the temporary folder has little room: the suite keeps about
    0.7 GiB there at its peak (sampled during a fresh-clone ``make test``: checkpoints of small models
    from the training and conversion tests, each removed when its test passes), and a full disk fails
    those tests with ``OSError: [Errno 28] No space left on device``."""
    tmp, free = _free_tmp()
    if free < 2:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"WARNING: {tmp} has {free:.2f} GiB free; the suite keeps up to about 0.7 GiB of "
               f"checkpoints there at once: tests that save them fail if the disk fills")
        if reporter is not None:
            reporter.write_line(msg, yellow=True, bold=True)
