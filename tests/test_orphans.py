"""No orphans: ``kill -9`` of a training or evaluation process leaves none of its processes behind
(DataLoader workers, the forkserver they are forked from, the multiprocessing resource tracker).

Each test runs the real script in its own session (``start_new_session=True``), with two loader
workers, on the COCO subset in tests/data at a 128-pixel scale with the ResNet-18-FPN Faster R-CNN;
once the workers are up and the run is making progress, SIGKILL goes to the main process only, and
5 s later no process of that session may be alive. The session is killed whatever happens, so the test leaks nothing.
See ``gluon_rcnn.data.loader.worker_context`` for the mechanism.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluon_rcnn.data.loader import effective_num_workers, worker_context
from conftest import COCO_ANN, COCO_IMAGES, REPO, need
from proc_table import processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"),
                                reason="walks /proc; the parent-death signal is Linux-only")

SMALL = ["PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]", "PREPROC.TEST_SHORT_EDGE_SIZE=128", "PREPROC.MAX_SIZE=213"]
MODEL = "faster_rcnn_fpn_resnet18_v1b_coco"
PROGRESS = re.compile(r"(\d+)/(\d+) \[")  # tqdm: "  3/128 [00:02<..."


def _session(sid: int) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every live (non-zombie) process whose session id is ``sid``."""
    return {pid: (p["ppid"], p["cmd"]) for pid, p in processes().items()
            if p["session"] == sid and p["state"] not in ("Z", "X")}


def _workers(main: int, procs: dict) -> list[int]:
    """The loader workers among ``procs``: neither the main process, nor the resource tracker, nor
    the forkserver server itself (its workers are its children)."""
    server = {p for p, (pp, cmd) in procs.items() if pp == main and "multiprocessing.forkserver" in cmd}
    return [p for p, (pp, cmd) in procs.items()
            if p != main and p not in server and "resource_tracker" not in cmd]


def _kill_session(sid: int) -> None:
    try:
        os.killpg(sid, signal.SIGKILL)  # the session leader's group: everything that did not move out
    except OSError:
        pass
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _kill_leaves_nothing(cmd: list[str], tmp_path: Path, min_done: int, timeout: float = 120) -> None:
    """Run ``cmd`` in a new session until two loader workers exist and its progress bar has passed
    ``min_done``; ``kill -9`` the main process; assert that nothing of the session is alive 5 s on."""
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        p = subprocess.Popen(cmd, cwd=str(REPO), env=_env(), stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True)
    sid = p.pid  # a new session's id is its leader's pid
    try:
        deadline, ready, seen = time.time() + timeout, False, {}
        while time.time() < deadline and p.poll() is None:
            seen = _session(sid)
            done = [int(m.group(1)) for m in PROGRESS.finditer(err_path.read_text(errors="replace"))]
            if len(_workers(p.pid, seen)) >= 2 and done and max(done) >= min_done:
                ready = True
                break
            time.sleep(0.2)
        tail = err_path.read_text(errors="replace")[-3000:]
        assert p.poll() is None, f"the run ended (rc {p.returncode}) before it could be killed:\n{tail}"
        assert ready, f"no two loader workers and progress within {timeout} s; session: {seen}\n{tail}"
        before = _session(sid)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        t0 = time.time()
        left = _session(sid)
        while left and time.time() - t0 < 5:
            time.sleep(0.1)
            left = _session(sid)
        survivors = "\n".join(f"  {pid} (parent {pp}): {c[:200]}" for pid, (pp, c) in sorted(left.items()))
        print(f"session of {p.pid} before the kill: {sorted(before)}; left {time.time() - t0:.1f} s after: "
              f"{sorted(left) or 'nothing'}")
        assert not left, f"{len(left)} process(es) of the killed run survived 5 s:\n{survivors}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        _kill_session(sid)


def test_kill_9_training_leaves_no_process(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "train_faster_rcnn.py"),
           "--annotations", str(need(COCO_ANN)), "--images", str(need(COCO_IMAGES)),
           "--output", str(tmp_path / "run"), "--model", MODEL,
           "--max-iter", "1000", "--no-eval",
           "--config", "DATA.NUM_WORKERS=2", "TRAIN.IMS_PER_GPU=1", "TRAIN.LOG_PERIOD=1", *SMALL]
    _kill_leaves_nothing(cmd, tmp_path, min_done=1)


def test_kill_9_evaluation_leaves_no_process(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "eval.py"),
           "--annotations", str(need(COCO_ANN)), "--images", str(need(COCO_IMAGES)), "--model", MODEL,
           "--random-weights",
           "--num-workers", "2", "--device", "cpu", "--batch-size", "1",
           "--output", str(tmp_path / "results.json"), "--config", *SMALL]
    _kill_leaves_nothing(cmd, tmp_path, min_done=2)


def test_worker_count_is_capped_at_the_cpus():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - Linux-only module
        cpus = os.cpu_count()
    assert effective_num_workers(0) == 0
    assert effective_num_workers(1) == 1
    assert effective_num_workers(cpus) == cpus
    assert effective_num_workers(cpus + 3) == cpus
    assert worker_context(0) is None
    assert worker_context(2).get_start_method() == "forkserver"
