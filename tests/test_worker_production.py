"""The worker in RunPod's production mode (`python handler.py` taking jobs from a queue), against a loopback
stand-in of RunPod's job-take / job-stop / job-done endpoints: what RunPod receives for a result, an error and
progress, that a stop signal really stops the model work and frees the worker for the next job, and
scripts/client.py's endpoint mode (/run, then GET /status with progress) through the same stand-in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from mediagen import make_image, make_video
from tiny import write_tiny_setup
from worker_helpers import ROOT, FakeRunPod, b64

SMALL = {"res_h": 64, "res_w": 96}
TWO_WINDOWS = {"batch_frames": 5, "overlap_frames": 1}


@pytest.fixture(scope="module")
def runpod(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker_production")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    files = {
        "video": make_video(root / "clip.mp4", frames=9, width=64, height=48),
        "long": make_video(root / "long.mp4", frames=41, width=64, height=48, with_audio=False),
        "image": make_image(root / "still.png", width=64, height=48),
    }
    fake = FakeRunPod()
    env = {
        **os.environ,
        **fake.env,
        "SEEDVR_CKPT_DIR": str(ckpt_dir),
        "SEEDVR_CONFIG_DIR": str(config_dir),
        "PROGRESS_INTERVAL": "0.2",
        "RUNPOD_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = root / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "handler.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield {"fake": fake, "files": files, "log": log_path}
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            fake.close()


def test_result_and_progress_reach_runpod(runpod):
    fake = runpod["fake"]
    fake.submit("ok-1", {"media": b64(runpod["files"]["video"]), **SMALL, **TWO_WINDOWS})
    final = fake.wait_final("ok-1")
    assert set(final) == {"output"}, final
    assert final["output"]["resolution"] == "90x68" and final["output"]["media"] == final["output"]["videos"]
    progress = [body["output"] for body in fake.bodies("ok-1") if body.get("status") == "IN_PROGRESS"]
    assert len(progress) >= 2 and {p["windows"] for p in progress} == {2}
    assert all({"stage", "window", "frames_done", "frames_total", "percent", "eta_seconds"} <= set(p) for p in progress)


def test_error_reaches_runpod_as_one_string_with_its_code(runpod):
    fake = runpod["fake"]
    fake.submit("bad-1", {"media": "%%%", **SMALL})
    final = fake.wait_final("bad-1")
    assert final["output"] == {"error_code": "INVALID_INPUT"}
    assert isinstance(final["error"], str) and final["error"].startswith("Invalid base64 media data")
    assert "stopPod" not in final


def test_stop_signal_stops_the_work_and_frees_the_worker(runpod):
    fake = runpod["fake"]
    fake.submit("long-1", {"media": b64(runpod["files"]["long"]), **SMALL, **TWO_WINDOWS})
    deadline = time.monotonic() + 120
    while not fake.bodies("long-1"):  # the first progress update: the model work has begun
        assert time.monotonic() < deadline, "no progress from long-1"
        time.sleep(0.05)
    fake.stop_job("long-1")
    fake.submit("after-1", {"image": b64(runpod["files"]["image"]), **SMALL})
    after = fake.wait_final("after-1")
    assert after["output"]["media_type"] == "image"
    assert fake.final("long-1") is None  # RunPod owns a stopped job's state: nothing is posted
    windows = {body["output"]["window"] for body in fake.bodies("long-1")}
    assert max(windows) < 10, windows  # 41 frames make 10 windows; the job stopped long before the last
    log = runpod["log"].read_text(errors="replace")
    assert "job long-1 cancelled: stopping at the next window" in log
    assert "job long-1 failed: CANCELLED" in log


def test_client_against_an_endpoint(runpod, tmp_path):
    target = tmp_path / "restored.mp4"
    env = {**os.environ, "RUNPOD_API_KEY": "secret-key", "RUNPOD_ENDPOINT_BASE_URL": runpod["fake"].api_url}
    client = [sys.executable, "scripts/client.py", "--endpoint", "test-endpoint", "--poll", "0.1"]
    job = [str(runpod["files"]["long"]), "-o", str(target), "--res-h", "64", "--res-w", "96", "--batch-frames", "5"]
    result = subprocess.run(client + job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"window \d+/10, frames \d+/41 \(\d+\.\d%\)", result.stderr), result.stderr  # the progress line
    assert target.read_bytes()[4:8] == b"ftyp" and f"saved {target} (90x68, video)" in result.stderr
    assert set(runpod["fake"].auth) == {"Bearer secret-key"}
    bad = subprocess.run(
        client + [job[0], "--res-h", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "error [INVALID_INPUT]: res_h must be an integer between 64 and 4096" in bad.stderr
