"""Distributed runs die together, and one output folder has one run.

* ``kill -9`` of the torchrun agent of a 2-process CPU training (each rank with a loader worker):
  within 5 s no rank, forkserver or loader worker is alive (``engine.dist.die_with_launcher``);
* ``kill -9`` of one rank while the agent lives: the agent stops the other rank and exits;
* while that run trains, a second run on the same ``--output`` exits 2 naming rank 0's pid
  (``engine.runlock``); after the kill the lock left behind is taken over with a warning;
* the lock itself: refused while held, taken over when its run is gone on this host, refused
  from another host unless forced, removed when ``Trainer.train()`` ends.

The runs use the tiny Mask R-CNN and the 8-image set of tests/test_train.py.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluon_rcnn.engine.runlock import LOCK_NAME, OutputLock, OutputLockedError
from proc_table import processes
from test_train import TINY, _env, _train_cmd, _train_two_steps, make_tiny_coco

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"),
                                reason="walks /proc; the parent-death signal is Linux-only")

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------------
def test_lock_refuses_while_held_and_is_removed_on_release(tmp_path):
    lock = OutputLock(str(tmp_path / "out")).acquire()
    owner = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(OutputLockedError, match=rf"in use by another training run: pid {os.getpid()} on host"):
        OutputLock(str(tmp_path / "out")).acquire()  # another open file: its flock conflicts
    lock.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with OutputLock(str(tmp_path / "out")):
        assert (tmp_path / "out" / LOCK_NAME).exists()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "then"}))
    with caplog.at_level(logging.WARNING, logger="gluon_rcnn.engine.runlock"):
        with OutputLock(str(tmp_path)):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any(f"taking over the lock of pid {dead} on host" in r.getMessage() and "no longer running" in
               r.getMessage() for r in caplog.records)


def test_lock_of_another_host_needs_force(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "started": "then"}))
    with pytest.raises(OutputLockedError, match=r"another host: pid 4242 on host elsewhere.example.*--force-unlock"):
        OutputLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == 4242  # left as it was
    with caplog.at_level(logging.WARNING, logger="gluon_rcnn.engine.runlock"):
        with OutputLock(str(tmp_path), force=True):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any("pid 4242 on host elsewhere.example" in r.getMessage() and "forced" in r.getMessage()
               for r in caplog.records)


def test_trainer_holds_the_lock_until_train_ends(tmp_path):
    with OutputLock(str(tmp_path)):
        with pytest.raises(OutputLockedError, match=rf"pid {os.getpid()}"):
            _train_two_steps(tmp_path)
    _train_two_steps(tmp_path)
    assert (tmp_path / "model_final.pth").exists() and not (tmp_path / LOCK_NAME).exists()
    (tmp_path / "a_file").write_text("in the way")
    with pytest.raises(OutputLockedError, match=r"cannot lock the output folder .*a_file"):
        _train_two_steps(tmp_path / "a_file")


# ---------------------------------------------------------------------------------------------
# torchrun: kill the agent, kill a rank
# ---------------------------------------------------------------------------------------------
def _procs() -> dict[int, tuple[int, str, str, str]]:
    """pid -> (ppid, state, start time, command line) of every process."""
    return {pid: (p["ppid"], p["state"], p["start"], p["cmd"]) for pid, p in processes().items()}


def _tree(root: int, procs: dict) -> dict[int, tuple]:
    """``root``'s descendants (not ``root``)."""
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, info in procs.items():
            if info[0] == parent and pid not in found:
                found[pid] = info
                frontier.append(pid)
    return found


def _alive(recorded: dict[int, tuple]) -> dict[int, tuple]:
    """Those of ``recorded`` still running (same start time, not a zombie)."""
    now = _procs()
    return {p: now[p] for p, info in recorded.items() if p in now and now[p][2] == info[2] and now[p][1] not in "ZX"}


def _start_two_ranks(tiny, out: Path, log: Path) -> subprocess.Popen:
    ann, imgs = tiny
    cmd = _train_cmd(ann, imgs, out, "--max-iter", "100000", "--no-eval", "--config", *TINY,
                     "DATA.NUM_WORKERS=1", "TRAIN.CHECKPOINT_PERIOD=100000", nproc=2)
    with open(log, "w") as err:
        return subprocess.Popen(cmd, env=_env(), cwd=str(REPO), stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_training(p: subprocess.Popen, out: Path, log: Path, timeout: float = 150) -> tuple[dict, list, dict]:
    """Wait until iteration 1 is logged (DDP: both ranks did it) and each rank has a loader worker;
    returns (the agent's descendants, the two rank pids, rank pid -> its workers)."""
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        tree = _tree(p.pid, _procs())
        ranks = sorted(q for q, i in tree.items() if i[0] == p.pid and "train_mask_rcnn.py" in i[3])
        # a rank's children are its forkserver and resource tracker; the forkserver's, its loader workers
        workers = {r: [q for q, i in _tree(r, tree).items() if i[0] != r] for r in ranks}
        metrics = out / "metrics.jsonl"
        if (len(ranks) == 2 and all(workers.values()) and metrics.exists()
                and metrics.read_text().strip()):
            return tree, ranks, workers
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:]
    raise AssertionError(f"the 2-rank run was not training with its loader workers within {timeout} s "
                         f"(rc {p.poll()}):\n{tail}")


def _cleanup(p: subprocess.Popen, recorded: dict) -> None:
    """SIGKILL the agent and everything recorded or still under it (whatever the test's outcome)."""
    if p.poll() is None:
        recorded = {**recorded, **_tree(p.pid, _procs())}
    for pid in [p.pid, *_alive(recorded)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if p.poll() is None:
        p.kill()
    p.wait(30)


def _gone_within(recorded: dict, seconds: float) -> tuple[dict, float]:
    t0 = time.time()
    left = _alive(recorded)
    while left and time.time() - t0 < seconds:
        time.sleep(0.1)
        left = _alive(recorded)
    return left, time.time() - t0


@pytest.fixture(scope="module")
def tiny(module_tmp):
    return make_tiny_coco(module_tmp("tiny_coco"))


def test_kill_9_of_torchrun_agent_stops_every_rank_and_the_lock_refuses_a_second_run(tiny, tmp_path):
    out, log = tmp_path / "run", tmp_path / "torchrun.log"
    p = _start_two_ranks(tiny, out, log)
    recorded: dict = {}
    try:
        recorded, ranks, workers = _wait_training(p, out, log)
        rank0 = next(q for q in ranks if b"\0RANK=0\0" in b"\0" + Path(f"/proc/{q}/environ").read_bytes())
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == rank0  # rank 0 holds the lock
        # a second run on the same folder, while the first trains
        ann, imgs = tiny
        r = subprocess.run(_train_cmd(ann, imgs, out, "--max-iter", "2", "--no-eval", "--config", *TINY),
                           env=_env(), cwd=str(REPO), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr[-3000:]
        assert f"is in use by another training run: pid {rank0} on host {socket.gethostname()}" in r.stderr
        assert "Traceback" not in r.stderr
        assert p.poll() is None, "the 2-rank run ended while the second run was refused"

        recorded = _tree(p.pid, _procs())  # again: everything alive now, loader workers included
        before = {q: i[3][:80] for q, i in sorted(recorded.items())}
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        left, waited = _gone_within(recorded, 5)
        print(f"agent {p.pid}, ranks {ranks}, loader workers {workers}; processes before the kill: {before}; "
              f"{waited:.1f} s after the kill: {sorted(left) or 'nothing'} alive")
        assert not left, f"survived the agent's kill -9 by 5 s: {left}\n{log.read_text(errors='replace')[-3000:]}"
        # the lock rank 0 left is stale: the next run on this host takes it over
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == rank0
        with OutputLock(str(out)):
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        _cleanup(p, recorded)


def test_kill_9_of_a_rank_stops_the_other_and_the_agent(tiny, tmp_path):
    out, log = tmp_path / "run", tmp_path / "torchrun.log"
    p = _start_two_ranks(tiny, out, log)
    recorded: dict = {}
    try:
        recorded, ranks, workers = _wait_training(p, out, log)
        recorded = _tree(p.pid, _procs())
        recorded[p.pid] = _procs()[p.pid]
        os.kill(ranks[1], signal.SIGKILL)
        p.wait(60)  # the agent sees the failure, stops the other rank (SIGTERM to its process group), exits
        left, waited = _gone_within(recorded, 5)
        print(f"killed rank {ranks[1]}; agent exit {p.returncode}; {waited:.1f} s later alive: "
              f"{sorted(left) or 'nothing'}")
        assert p.returncode != 0 and not left, left
    finally:
        _cleanup(p, recorded)
