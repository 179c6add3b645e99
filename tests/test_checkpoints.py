"""get_model(name, pretrained=checkpoint): the checkpoint's architecture must be the entry's; its
dataset/recipe keys come with it; keys an older version wrote load with a warning."""
from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch

from gluon_rcnn import model_zoo, zoo_check
from gluon_rcnn.config import ConfigError, get_default_config

ENTRY = "faster_rcnn_fpn_resnet18_v1b_coco"
SMALL = ["PREPROC.TEST_SHORT_EDGE_SIZE=128", "PREPROC.MAX_SIZE=160", "TEST.RESULT_SCORE_THRESH=0.01",
         "TRAIN.BASE_LR=0.005"]
# keys this refactor removes; a checkpoint written before it still holds them
REMOVED = {"TRAIN": {"STEPS_PER_EPOCH": 500, "LR_SCHEDULE_STEPS": [1000, 2000], "NUM_GPUS": 8},
           "RPN": {"CROWD_OVERLAP_THRESH": 9.99, "ANCHOR_STRIDE": 16},
           "FPN": {"ANCHOR_STRIDES": [4, 8, 16, 32, 64]}}


def _save(tmp_path, model, config: dict, name="model_final.pth"):
    """What Trainer.save_final writes."""
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "config": config}, path)
    return str(path)


def _cfg(model):
    """The config a model was built from (``model.config``; ``model.cfg`` in older versions)."""
    return getattr(model, "config", None) or model.cfg


def _detect(model, image):
    with torch.no_grad():
        return model([image])[0]


@pytest.fixture(scope="module")
def saved(module_tmp):
    torch.manual_seed(0)
    model = model_zoo.get_model(ENTRY, classes=["a", "b"], overrides=SMALL)
    tmp = module_tmp("ckpt")
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))
    return {"model": model, "config": _cfg(model).to_dict(), "path": _save(tmp, model, _cfg(model).to_dict()),
            "image": image, "out": _detect(model, image)}


def _same_outputs(a, b):
    assert a["boxes"].shape[0] > 0  # something to compare
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a[k], b[k]), k


def _unknown_to_this_version(d: dict) -> list[str]:
    default = get_default_config()
    return [f"{s}.{k}" for s, sec in d.items() for k in sec if k not in default[s]]


# (a) ---------------------------------------------------------------------------------------
def test_other_architecture_is_refused_naming_both(saved):
    with pytest.raises(model_zoo.ZooError) as err:
        model_zoo.get_model("mask_rcnn_resnet101_v1d_coco", pretrained=saved["path"])
    msg = str(err.value)
    assert "mask_rcnn_resnet101_v1d_coco is a Mask R-CNN C4 ResNet-101 v1d" in msg
    assert f"{saved['path']} holds a Faster R-CNN FPN GN ResNet-18 v1b (2 classes)" in msg
    for key in ("MODE_MASK", "MODE_FPN", "BACKBONE.RESNET_NUM_BLOCKS", "BACKBONE.VARIANT"):
        assert key in msg


def test_changed_width_is_refused_unless_asked_for(tmp_path, saved):
    # trained from the entry with a narrower FPN (as scripts/demo.py does): a different model,
    # unless the same override is given when loading
    torch.manual_seed(0)
    narrow = model_zoo.get_model(ENTRY, classes=["a", "b"], overrides=SMALL + ["FPN.NUM_CHANNEL=128"])
    path = _save(tmp_path, narrow, _cfg(narrow).to_dict())
    with pytest.raises(model_zoo.ZooError, match=r"FPN\.NUM_CHANNEL: 256 vs 128"):
        model_zoo.get_model(ENTRY, pretrained=path)
    net = model_zoo.get_model(ENTRY, pretrained=path, overrides=["FPN.NUM_CHANNEL=128"])
    _same_outputs(_detect(narrow, saved["image"]), _detect(net, saved["image"]))


# (b) ---------------------------------------------------------------------------------------
def test_same_architecture_loads_with_its_classes_and_recipe(saved, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unknown in a checkpoint of this version
        with caplog.at_level(logging.WARNING, logger="gluon_rcnn.model_zoo"):
            net = model_zoo.get_model(ENTRY, pretrained=saved["path"])
    assert net.classes == ("a", "b") and _cfg(net).DATA.NUM_CATEGORY == 2
    # dataset/recipe keys come from the checkpoint, TRAIN.* included
    assert _cfg(net).PREPROC.TEST_SHORT_EDGE_SIZE == 128 and _cfg(net).TRAIN.BASE_LR == pytest.approx(0.005)
    assert _cfg(net).BACKBONE.WEIGHTS == ""
    _same_outputs(saved["out"], _detect(net, saved["image"]))
    # ... and reported in one line
    lines = [r.getMessage() for r in caplog.records if "taken from" in r.getMessage()]
    assert len(lines) == 1
    entry = model_zoo.get_config(ENTRY)
    assert "DATA.NUM_CATEGORY 80 -> 2" in lines[0] and "['a', 'b']" in lines[0]
    assert f"PREPROC.TEST_SHORT_EDGE_SIZE {entry.PREPROC.TEST_SHORT_EDGE_SIZE} -> 128" in lines[0]


# (c) ---------------------------------------------------------------------------------------
def test_keys_of_another_version_load_with_a_warning(tmp_path, saved):
    config = copy.deepcopy(saved["config"])
    for section, keys in REMOVED.items():
        config[section].update(keys)
    config["RPN"]["SOME_FUTURE_KEY"] = 1
    config["OLD_SECTION"] = {"X": 1}
    path = _save(tmp_path, saved["model"], config)
    with pytest.warns(UserWarning, match="does not know") as rec:
        net = model_zoo.get_model(ENTRY, pretrained=path)
    msg = " ".join(str(w.message) for w in rec)
    for key in ["RPN.SOME_FUTURE_KEY", "OLD_SECTION"] + _unknown_to_this_version(REMOVED):
        assert key in msg
    assert net.classes == ("a", "b")
    _same_outputs(saved["out"], _detect(net, saved["image"]))


# (d) ---------------------------------------------------------------------------------------
def test_architecture_hidden_in_an_unknown_key_fails_the_strict_load(tmp_path):
    # an older version that called the box head width FPN.FC_HEAD_DIM: the known key is absent,
    # so the entry's 1024 is used, and the weights (512 wide) do not fit
    torch.manual_seed(0)
    model = model_zoo.get_model(ENTRY, classes=["a", "b"], overrides=SMALL + ["FPN.FRCNN_FC_HEAD_DIM=512"])
    config = _cfg(model).to_dict()
    del config["FPN"]["FRCNN_FC_HEAD_DIM"]
    config["FPN"]["FC_HEAD_DIM"] = 512
    path = _save(tmp_path, model, config)
    with pytest.warns(UserWarning, match=r"FPN\.FC_HEAD_DIM"):
        with pytest.raises(ValueError, match=r"do not fit the model") as err:
            model_zoo.get_model(ENTRY, pretrained=path)
    msg = str(err.value)
    assert "shape mismatch" in msg and "(512, 12544) in the file, (1024, 12544) in the model" in msg
    assert "FPN.FC_HEAD_DIM" in msg and "likely changed the architecture" in msg


def test_state_dict_that_does_not_fit_is_refused(tmp_path, saved):
    # a clear ValueError listing every kind of misfit (not torch's RuntimeError on the first shape)
    state = dict(saved["model"].state_dict())
    state.pop("rpn.head.conv.weight")
    state["extra.weight"] = torch.zeros(1)
    state["rpn.head.conv.bias"] = torch.zeros(3)
    path = str(tmp_path / "bad.pth")
    torch.save({"model": state, "config": saved["config"]}, path)
    with pytest.raises(ValueError, match=r"missing \['rpn.head.conv.weight'\], unexpected \['extra.weight'\], shape "
                                         r"mismatch \['rpn.head.conv.bias \(3,\) in the file, \(256,\) in the model'\]"):
        model_zoo.get_model(ENTRY, pretrained=path)


# the pieces ---------------------------------------------------------------------------------
def test_update_dict_unknown_keys_error_or_report():
    cfg = get_default_config()
    with pytest.raises(ConfigError, match="SOME_FUTURE_KEY"):
        cfg.update_dict({"RPN": {"SOME_FUTURE_KEY": 1}})
    with pytest.raises(ConfigError, match="OLD_SECTION"):
        cfg.update_dict({"OLD_SECTION": {"X": 1}})
    got = cfg.update_dict({"RPN": {"SOME_FUTURE_KEY": 1, "HEAD_DIM": 512}, "OLD_SECTION": {"X": 1},
                           "OLD_TOP": 3}, unknown="report")
    assert got == ["RPN.SOME_FUTURE_KEY", "OLD_SECTION", "OLD_TOP"]
    assert cfg.RPN.HEAD_DIM == 512                      # the known keys are applied
    with pytest.raises(ConfigError, match="HEAD_DIM"):  # known keys are still type-checked
        cfg.update_dict({"RPN": {"HEAD_DIM": "wide"}}, unknown="report")
    assert cfg.update_dict({"RPN": {"HEAD_DIM": 256}}) == []
    with pytest.raises(ValueError, match="unknown="):
        cfg.update_dict({}, unknown="ignore")


def test_architecture_differences_are_found_by_building():
    """A key is architecture where changing it changes the built model's parameters (names, shapes):
    no list of keys is kept, a key unused by both models is no difference."""
    fpn = model_zoo.get_config("faster_rcnn_fpn_resnet50_v1b_coco")
    c4 = model_zoo.get_config("faster_rcnn_resnet50_v1b_coco")
    c4b = c4.clone()
    c4b.FPN.NUM_CHANNEL = 128                 # unused by a C4 model
    c4b.TEST.RESULT_SCORE_THRESH = 0.5        # recipe
    c4b.PREPROC.TEST_SHORT_EDGE_SIZE = 600    # preprocessing
    assert zoo_check.signature(c4b) == zoo_check.signature(c4)
    assert zoo_check.architecture_differences(c4, c4b) == []
    c4b.RPN.HEAD_DIM = 512
    assert zoo_check.architecture_differences(c4, c4b) == ["RPN.HEAD_DIM: 1024 vs 512"]
    params = zoo_check.parameter_differences(zoo_check.signature(c4), zoo_check.signature(c4b))
    assert "rpn.head.conv.weight (1024, 1024, 3, 3) vs (512, 1024, 3, 3)" in params and "only in" not in params
    assert "MODE_FPN: True vs False" in zoo_check.architecture_differences(fpn, c4)
    more = c4.clone()
    more.DATA.NUM_CATEGORY, more.DATA.CLASS_NAMES = 2, ["a", "b"]
    assert zoo_check.architecture_differences(c4, more) == ["DATA.NUM_CATEGORY: 80 vs 2",
                                                            f"DATA.CLASS_NAMES: {list(c4.DATA.CLASS_NAMES)!r} vs ['a', 'b']"]


def test_the_demo_loads_its_checkpoint(tmp_path):
    """scripts/demo.py trains MODEL with a narrower FPN and box head, then loads the checkpoint as
    MODEL (evaluation, drawing): with the same architecture overrides, which it must pass."""
    import importlib.util

    from conftest import REPO
    from gluon_rcnn.builders import build_model
    from gluon_rcnn.cli import eval as evaluate
    from gluon_rcnn.cli import train as launch

    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = demo.train_argv(10, tmp_path / "train.json", tmp_path / "images", tmp_path / "run", seed=0)
    cfg = launch.build_config(launch.build_arg_parser(mask=False).parse_args(argv), mask=False)
    cfg.DATA.NUM_CATEGORY, cfg.DATA.CLASS_NAMES = 2, ["a", "b"]  # the trainer takes them from the dataset
    torch.manual_seed(0)
    trained = build_model(cfg)
    path = _save(tmp_path, trained, _cfg(trained).to_dict())
    with pytest.raises(model_zoo.ZooError, match="FPN.NUM_CHANNEL"):
        model_zoo.get_model(demo.MODEL, pretrained=path)  # without them: refused, not silently rebuilt
    for net in (model_zoo.get_model(demo.MODEL, pretrained=path, overrides=demo.DEMO_ARCH),
                evaluate._load_model(demo.MODEL, path, demo.DEMO_ARCH)):
        assert net.classes == ("a", "b")
        want = trained.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items())
