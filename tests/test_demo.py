"""scripts/demo.py's training schedule (the demo itself trains for minutes and is not run here)."""
import importlib.util

import pytest

from conftest import REPO
from gluon_rcnn.config import ConfigError, schedule_steps
from gluon_rcnn.cli import train as launch
from gluon_rcnn.engine.trainer import WarmupStepLR


def _demo():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("iters", [1, 2, 3, 10, 600])
def test_demo_training_config_accepts_any_iters(iters, tmp_path):
    """--iters 10 used to stop with 'TRAIN.LR_SCHEDULE=[4, 4, 5] must be increasing positive steps'."""
    demo = _demo()
    argv = demo.train_argv(iters, tmp_path / "train.json", tmp_path / "images", tmp_path / "run", seed=0)
    args = launch.build_arg_parser(mask=False).parse_args(argv)
    cfg = launch.build_config(args, mask=False)  # what scripts/demo.py's train_main call builds
    cfg.finalize()  # used to raise 'TRAIN.LR_SCHEDULE=[4, 4, 5] must be increasing positive steps'
    sched = WarmupStepLR.from_config(cfg, world_size=1, max_iter=args.max_iter)  # what the trainer runs
    assert sched.max_iter == iters  # trains exactly --iters iterations
    steps = sched.decay_steps + [sched.max_iter]
    assert all(0 < a < b for a, b in zip(steps, steps[1:])) and steps[0] > 0
    if iters == 600:  # the default run decays at 80 % and 95 %
        assert sched.decay_steps == [480, 570]


@pytest.mark.parametrize("total_batch", [1, 2, 4, 8, 16, 64])
@pytest.mark.parametrize("iters", list(range(1, 41)) + [99, 600, 90000])
def test_schedule_for_iterations_is_valid_and_covers_the_run(iters, total_batch):
    sched = launch.schedule_for_iterations(iters, total_batch, decay_at=(0.8, 0.95))
    assert all(0 < a < b for a, b in zip(sched, sched[1:])) and sched[0] > 0
    real = schedule_steps(sched, total_batch)  # what finalize() makes of it: never refused
    assert real[-1] >= iters  # --max-iter then cuts it to exactly iters
    assert len(sched) <= 3


def test_schedule_for_iterations_refuses_nonsense():
    with pytest.raises(ConfigError):
        launch.schedule_for_iterations(0, 4)
    with pytest.raises(ConfigError):
        launch.schedule_for_iterations(10, 4, decay_at=(1.2,))


def test_mixed_training_labels_take_humans_where_they_cover_an_image(tmp_path):
    """scripts/demo.py --train-labels mixed: the consensus's annotations (sources and ignore regions) on the
    images it covers, the rule's on the others; every training image kept, ids renumbered."""
    import json
    demo = _demo()
    cats = [{"id": 1, "name": "1C_1P"}]
    rule = {"info": {}, "categories": cats, "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}]}
    human = {"info": {}, "categories": cats, "images": [{"id": 2, "file_name": "b.png", "labels": "rgz_consensus"}],
             "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [2, 2, 9, 9], "iscrowd": 0},
                             {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 20, 9, 9], "iscrowd": 1}]}
    (tmp_path / "r.json").write_text(json.dumps(rule))
    (tmp_path / "h.json").write_text(json.dumps(human))
    m = demo.mixed_labels(tmp_path / "r.json", tmp_path / "h.json", tmp_path / "m.json")
    assert m == {"images": 2, "human_images": 1, "annotations": 3}
    out = json.loads((tmp_path / "m.json").read_text())
    assert [im["id"] for im in out["images"]] == [1, 2] and out["images"][1]["labels"] == "rgz_consensus"
    assert [(a["id"], a["image_id"], a["bbox"], a["iscrowd"]) for a in out["annotations"]] == [
        (1, 1, [0, 0, 5, 5], 0), (2, 2, [2, 2, 9, 9], 0), (3, 2, [20, 20, 9, 9], 1)]


def test_results_files_of_the_three_trainings_never_collide():
    """--train-labels human used to write its rule-label results to results_instances_test_human.json, the
    rule run's human-label file, when both ran into the same --output."""
    from pathlib import Path
    demo = _demo()
    names = [demo.results_name(Path("annotations") / test, labels)
             for test in ("instances_test.json", "instances_test_human.json") for labels in ("rule", "human", "mixed")]
    assert len(set(names)) == len(names)
    # the default run keeps its names
    assert demo.results_name(Path("instances_test.json"), "rule") == "results_instances_test.json"
    assert demo.results_name(Path("instances_test_human.json"), "rule") == "results_instances_test_human.json"
