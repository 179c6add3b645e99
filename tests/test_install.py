"""A plain `pip install .` carries the zoo entries: get_model works outside the source tree."""
import subprocess
import sys

from conftest import REPO


def test_plain_install_has_zoo_entries(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                        "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "gluon_rcnn" / "zoo_entries" / "mask_rcnn_fpn_resnet101_v1d_coco.json").is_file()
    code = ("import gluon_rcnn, pathlib; assert 'site' in pathlib.Path(gluon_rcnn.__file__).parts, gluon_rcnn.__file__; "
            "names = gluon_rcnn.list_models(); assert 'mask_rcnn_fpn_resnet101_v1d_coco' in names, names; "
            "net = gluon_rcnn.get_model('faster_rcnn_fpn_resnet18_v1b_coco'); print(len(names), len(net.classes))")
    # run from an empty folder with only the installed copy on the path (not the source tree)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    n_models, n_classes = map(int, r.stdout.split())
    assert n_models >= 30 and n_classes == 80
