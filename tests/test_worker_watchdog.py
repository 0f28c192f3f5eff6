"""The watchdog: the stall limit follows the plan and the measured windows; a stalled job ends with an
error naming its stage and window, even when the stuck call never returns; a transient CUDA failure
costs one retry, not the job."""

from __future__ import annotations

import base64
import os
import signal
import threading

import pytest

from mediagen import make_video
from tiny import write_tiny_setup
from test_worker_parallel import alive
from worker_helpers import Updates, b64

from seedvr.manager import ManagerConfig, ModelManager
from seedvr.pipeline import Progress, sampling
from seedvr.worker import watchdog as watchdog_module
from seedvr.worker.service import Worker
from seedvr.worker.settings import Limits, WorkerSettings
from seedvr.worker.watchdog import Watchdog

JOB = {"res_h": 64, "res_w": 96, "batch_frames": 5, "overlap_frames": 1, "seed": 4, "crf": 0}
LIMITS = Limits(max_input_bytes=500_000, max_frames=12, max_output_pixels=256 * 256, download_timeout=10)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(stage: str, window: int, pixels: int = 21 * 720 * 1280) -> Progress:
    return Progress(stage, window, 3, 0, 50, pixels)


def test_the_stall_limit_follows_the_plan_then_the_measured_windows():
    clock = Clock()
    dog = Watchdog(4, 30, "cuda", clock)
    beat = dog.arm(lambda e: None)
    assert dog.limit() == 30  # nothing known yet: the floor
    beat(event("encode", 1))
    assert dog.limit() == pytest.approx(4 * 21 * 720 * 1280 / 1e6 * 1.0)  # plan: 19.4 Mpx of work at 1 s/Mpx
    clock.now += 50
    beat(event("dit", 1))
    assert dog.stalled() is None
    clock.now += 10
    beat(event("encode", 2))  # window 1 took 60 s: now the measure, not the plan
    assert dog.slowest_window == 60 and dog.limit() == 240
    clock.now += 240
    assert dog.stalled() is None
    clock.now += 1
    message = dog.stalled()
    assert "no progress for 241 s after stage encode of window 2 of 3 started (stall limit 240 s" in message
    assert Watchdog(4, 30, "cuda", clock).stalled() is None  # not armed
    dog.disarm()
    assert dog.stalled() is None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("watchdog")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    return {"config_dir": config_dir, "ckpt_dir": ckpt_dir, "video": make_video(root / "clip.mp4", frames=9)}


@pytest.fixture(scope="module")
def manager(setup):
    return ModelManager(ManagerConfig(setup["ckpt_dir"], setup["config_dir"]))


def make_worker(manager, cpu_sp_max: int = 1) -> Worker:
    settings = WorkerSettings(limits=LIMITS, progress_interval=0.0, cpu_sp_max=cpu_sp_max)
    return Worker(manager, settings, sender=Updates())


def restore(worker: Worker, setup) -> dict:
    return worker.run({"id": "dog", "input": {"media": b64(setup["video"]), **JOB}})


def test_a_stuck_call_ends_the_job_and_the_worker_asks_to_be_replaced(manager, setup, monkeypatch):
    monkeypatch.setattr(watchdog_module, "POLL", 0.1)
    release, entered = threading.Event(), threading.Event()
    sample = sampling.sample

    def stuck(*args, **kwargs):  # as a hung kernel: it returns only when the test lets it
        entered.set()
        release.wait(120)
        return sample(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", stuck)
    # The limit itself is tested above; here a short one once the call is stuck, and none before it
    # (a loaded test machine must not trip it early).
    monkeypatch.setattr(Watchdog, "limit", lambda self: 2.0 if entered.is_set() else 3600.0)
    worker = make_worker(manager)
    try:
        answer = restore(worker, setup)
        assert entered.is_set()
        assert answer["error_code"] == "INTERNAL" and answer["refresh_worker"] is True, answer
        assert "Processing stalled: no progress for" in answer["error"]
        assert "after stage dit of window 1 of 2 started" in answer["error"]
        refused = restore(worker, setup)  # the stuck thread still holds the models
        assert refused["refresh_worker"] is True and "stalled job still holds this worker" in refused["error"]
    finally:
        release.set()
    worker._stuck.join(120)
    monkeypatch.undo()  # the real sampler and stall limit
    assert restore(worker, setup)["success"] is True  # the thread came back: the worker serves again


def test_a_transient_cuda_error_costs_one_retry_not_the_job(manager, setup, monkeypatch):
    worker = make_worker(manager)
    clean = restore(worker, setup)
    calls, sample = [], sampling.sample

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal instruction was encountered")
        return sample(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", flaky)
    answer = restore(worker, setup)
    assert answer.get("success") is True, answer
    assert len(calls) == 3  # two windows, the second one twice
    assert base64.b64decode(answer["media"][0]) == base64.b64decode(clean["media"][0])


@pytest.mark.slow
def test_a_deadlocked_rank_group_is_killed(manager, setup, monkeypatch):
    """Rank 1 freezes (SIGSTOP) mid-job: rank 0 waits in a collective for it and no progress comes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the rank processes
    monkeypatch.setattr(watchdog_module, "POLL", 0.1)
    frozen = threading.Event()
    monkeypatch.setattr(Watchdog, "limit", lambda self: 2.0 if frozen.is_set() else 3600.0)
    worker = make_worker(manager, cpu_sp_max=2)
    try:
        assert worker.run({"input": {"action": "initialize", "sp_size": 2}})["ready"] is True
        pids = worker.group.pids

        def freeze(update: dict) -> None:
            if update["window"] == 1 and not frozen.is_set():
                os.kill(pids[1], signal.SIGSTOP)
                frozen.set()

        worker.sender.on_update = freeze
        answer = restore(worker, setup)
        assert answer["error_code"] == "INTERNAL" and answer["refresh_worker"] is True, answer
        assert "Processing stalled" in answer["error"] and "of window 1 of 2" in answer["error"]
        assert worker.group is None and not any(alive(pid) for pid in pids)
    finally:
        worker.stop_ranks()

