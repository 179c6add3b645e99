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
