"""The worker with sp_size 2 on the CPU (gloo over loopback, SEEDVR_CPU_SP_MAX=2) and the tiny models:
resident rank processes give the sp_size 1 output, survive a dead rank (that job fails, the next one
rebuilds the group), answer a failure on one rank with that rank's error and serve the next job, follow
cancels, and stop when the worker swaps back to sp_size 1; and the same
through the local HTTP server (`handler.py --rp_serve_api`), where the ranks are spawned from RunPod's
process."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time

import numpy as np
import pytest

from mediagen import make_video
from tiny import write_tiny_setup
from worker_helpers import Updates, WorkerServer, b64

from seedvr.manager import ManagerConfig, ModelManager
from seedvr.parallel import FAULT_ENV
from seedvr.worker.service import Worker
from seedvr.worker.settings import Limits, WorkerSettings
from test_parallel_cli import assert_nearly_equal, video_frames

pytestmark = pytest.mark.slow  # rank processes start and load the model several times

# 9 frames in windows of 5 sharing 1: two windows, each 2 DiT windows (one per rank). crf 0: lossless,
# so that only the pipeline's frames are compared (a lossy encode magnifies one-level round-off).
JOB = {"res_h": 64, "res_w": 96, "batch_frames": 5, "overlap_frames": 1, "seed": 9, "crf": 0}
LIMITS = Limits(max_input_bytes=500_000, max_frames=12, max_output_pixels=256 * 256, download_timeout=10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker_sp")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    return {"config_dir": config_dir, "ckpt_dir": ckpt_dir, "video": make_video(root / "clip.mp4", frames=9)}


@pytest.fixture()
def worker(setup, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the rank processes
    manager = ModelManager(ManagerConfig(setup["ckpt_dir"], setup["config_dir"]))
    worker = Worker(manager, WorkerSettings(limits=LIMITS, progress_interval=0.0, cpu_sp_max=2), sender=Updates())
    yield worker
    worker.stop_ranks()


def restore(worker: Worker, setup, cancel: threading.Event | None = None, **fields) -> dict:
    return worker.run({"id": "sp-job", "input": {"media": b64(setup["video"]), **JOB, **fields}}, cancel)


def frames(answer: dict, tmp_path, name: str) -> np.ndarray:
    assert answer.get("success") is True, answer
    path = tmp_path / name
    path.write_bytes(base64.b64decode(answer["media"][0]))
    return video_frames(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sp2_matches_sp1_survives_a_dead_rank_and_swaps_back(worker, setup, tmp_path):
    want = frames(restore(worker, setup, sp_size=1), tmp_path, "sp1.mp4")

    init = worker.run({"input": {"action": "initialize", "sp_size": 2}})
    assert (init["sp_size"], init["ready"]) == (2, True) and init["load_seconds"] > 0
    assert worker.manager.models is None  # the model lives in the ranks now
    assert worker.run({"input": {"action": "initialize", "sp_size": 2}})["load_seconds"] == 0.0
    health = worker.health()
    assert (health["sp_size"], health["model_initialized"], health["model_type"]) == (2, True, "seedvr2_3b")

    worker.sender.sent.clear()
    answer = restore(worker, setup)  # no sp_size: the resident group runs it
    assert answer["processing_info"]["sequence_parallel_size"] == 2
    assert_nearly_equal(frames(answer, tmp_path, "sp2.mp4"), want)
    assert {u["windows"] for u in worker.sender.sent} == {2}  # rank 0's progress reaches the client

    pids = worker.group.pids
    os.kill(pids[1], signal.SIGKILL)
    while worker.group.exitcodes()[1] is None:  # dead before the job starts
        time.sleep(0.05)
    failed = restore(worker, setup)
    assert failed["error_code"] == "INTERNAL", failed
    assert "sequence-parallel rank 1 of 2 is gone (exit code -9)" in failed["error"]
    assert "restarted for the next job" in failed["error"]
    assert not alive(pids[0])  # the rest of the broken group was ended
    assert (worker.health()["sp_size"], worker.health()["model_initialized"]) == (2, False)

    again = restore(worker, setup)
    assert "load_model" in again["processing_info"]["timings"]
    assert_nearly_equal(frames(again, tmp_path, "sp2b.mp4"), want)
    assert set(worker.group.pids).isdisjoint(pids)

    pids = worker.group.pids
    back = worker.run({"input": {"action": "initialize", "sp_size": 1}})
    assert back["sp_size"] == 1 and worker.group is None and worker.manager.models is not None
    assert not any(alive(pid) for pid in pids)
    assert worker.health()["sp_size"] == 1


def test_a_failure_on_rank_1_fails_the_job_and_the_ranks_serve_the_next(worker, setup, tmp_path, monkeypatch):
    want = frames(restore(worker, setup, sp_size=1, batch_frames=9), tmp_path, "sp1.mp4")  # one window
    monkeypatch.setenv(FAULT_ENV, "1:2")  # read by the rank processes, spawned by the initialize below
    assert worker.run({"input": {"action": "initialize", "sp_size": 2}})["ready"] is True
    pids = worker.group.pids

    failed = restore(worker, setup)  # two windows, one per rank: rank 1 fails before its window
    assert failed["error_code"] == "INTERNAL", failed
    assert "Processing failed: injected fault (SEEDVR_SP_FAULT) on rank 1 before window 2" in failed["error"]
    assert worker.group.running and worker.group.pids == pids and all(map(alive, pids))

    again = restore(worker, setup, batch_frames=9)  # one window, on both ranks together: no fault
    assert "load_model" not in again["processing_info"]["timings"]
    assert_nearly_equal(frames(again, tmp_path, "sp2.mp4"), want, levels=2)


def test_a_rank_dying_during_a_job_fails_it_then_cancel_and_limits(worker, setup, tmp_path):
    assert worker.run({"input": {"action": "initialize", "sp_size": 2}})["ready"] is True
    pids = worker.group.pids
    worker.sender.on_update = lambda update: os.kill(pids[1], signal.SIGKILL) if update["window"] == 1 else None
    failed = restore(worker, setup)
    assert failed["error_code"] == "INTERNAL", failed
    assert "sequence-parallel rank 1 of 2 stopped (exit code -9) during the job" in failed["error"]
    assert not any(alive(pid) for pid in pids)
    worker.sender.on_update = None

    cancel = threading.Event()
    worker.sender.sent.clear()
    worker.sender.on_update = lambda update: cancel.set() if update["window"] == 1 else None
    # 3 windows (stride 2): the rebuilt group restores windows 1 and 2 as one round (one per rank), then
    # every rank stops before window 3
    cancelled = restore(worker, setup, cancel, overlap_frames=3)
    assert cancelled["error_code"] == "CANCELLED", cancelled
    assert max(u["window"] for u in worker.sender.sent) == 2 and {u["windows"] for u in worker.sender.sent} == {3}
    assert worker.group.running  # a cancel is no failure: the ranks stay

    too_many = worker.run({"input": {"action": "initialize", "sp_size": 3}})
    assert too_many["error_code"] == "INVALID_INPUT"
    assert "sp_size must be an integer between 1 and 2 (SEEDVR_CPU_SP_MAX on a CPU worker)" in too_many["error"]


def test_through_the_http_server(setup, tmp_path):
    env = {"SEEDVR_CKPT_DIR": str(setup["ckpt_dir"]), "SEEDVR_CONFIG_DIR": str(setup["config_dir"]),
           "SEEDVR_CPU_SP_MAX": "2", "OMP_NUM_THREADS": "1"}
    server = WorkerServer(env, tmp_path / "worker.log")
    try:
        server.wait_ready()
        init = server.runsync({"action": "initialize", "sp_size": 2})["output"]
        assert (init["sp_size"], init["ready"]) == (2, True), server.log_tail()
        done = server.runsync({"media": b64(setup["video"]), **JOB})["output"]
        assert done["processing_info"]["sequence_parallel_size"] == 2, server.log_tail()
        assert frames(done, tmp_path, "http.mp4").shape == (9, 68, 90, 3)
        health = server.runsync({"action": "health"})["output"]
        assert (health["sp_size"], health["model_initialized"]) == (2, True)
        assert "starting 2 ranks on cpu" in server.log_tail(20_000)
    finally:
        server.stop()
