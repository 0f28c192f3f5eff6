"""Long videos as window ranges: the plan action, window parts over the local RunPod server, and the
client's fan-out (N = 3 parts, one part failing once) giving the single job's frames, count and audio;
then its --resume DIR reusing the finished parts without submitting any."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import av
import numpy as np
import pytest

from mediagen import make_video
from seedvr import media
from tiny import write_tiny_setup
from worker_helpers import ROOT, WorkerServer, b64

pytestmark = pytest.mark.slow  # a worker process and seven restore jobs on the tiny models

# 17 frames in windows of 9 sharing 5: (0, 9), (4, 13), (8, 17), so frame 8 is blended from all three
# windows, which sit in three different parts. crf 0: the encode is lossless in YUV, frames compare exactly.
SETTINGS = ["--scale", "1", "--batch-frames", "9", "--overlap-frames", "5", "--seed", "5", "--crf", "0"]


def load_client():
    spec = importlib.util.spec_from_file_location("seedvr_client", ROOT / "scripts" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fanout")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    video = make_video(root / "clip.mp4", frames=17, width=48, height=32, fps=Fraction(24))
    server = WorkerServer({"SEEDVR_CKPT_DIR": str(ckpt_dir), "SEEDVR_CONFIG_DIR": str(config_dir)}, root / "worker.log")
    try:
        server.wait_ready()
        yield {"server": server, "video": video, "client": load_client()}
    finally:
        server.stop()


def frames_of(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_plan_and_part_requests(env):
    server, video = env["server"], b64(env["video"])
    answer = server.runsync({"action": "plan", "media": video, "scale": 1.0, "batch_frames": 9, "overlap_frames": 5})
    assert answer["status"] == "COMPLETED", (answer, server.log_tail())
    plan = answer["output"]
    assert plan["windows"] == [[0, 9], [4, 13], [8, 17]] and plan["scene_cuts"] == []
    assert (plan["frames"], plan["frame_rate"], plan["resolution"], plan["has_audio"]) == (17, "24/1", "48x32", True)
    assert (plan["batch_frames"], plan["overlap_frames"], plan["vae_tile"]) == (9, 5, 0)
    bad = server.runsync({"media": video, "scale": 1.0, "batch_frames": 9, "overlap_frames": 5, "windows": [2, 4]})
    assert bad["status"] == "FAILED"
    assert "windows must be [first, stop] with 0 <= first < stop <= 3 (the plan's windows), got [2, 4]" in bad["error"]


def test_fan_out_equals_one_job_and_resumes(env, tmp_path, monkeypatch, capsys):
    client, url = env["client"], env["server"].url
    common = [str(env["video"]), "--url", url, "--poll", "0.2", *SETTINGS]
    single, fanned, again = tmp_path / "single.mp4", tmp_path / "fanned.mp4", tmp_path / "again.mp4"
    assert client.main([*common, "-o", str(single)]) == 0

    submit = client.Transport.submit
    doomed: list[list[int]] = []

    def fail_once(self, body):  # the middle part's first attempt goes to a job that fails
        windows = body["input"].get("windows")
        if windows == [1, 2] and not doomed:
            doomed.append(windows)
            return "doomed"
        return submit(self, body)

    status = client.Transport.status
    monkeypatch.setattr(client.Transport, "submit", fail_once)
    monkeypatch.setattr(
        client.Transport, "status",
        lambda self, job_id: {"status": "FAILED", "error": "worker lost"} if job_id == "doomed" else status(self, job_id),
    )
    parts = tmp_path / "parts"
    assert client.main([*common, "-o", str(fanned), "--workers", "3", "--resume", str(parts)]) == 0
    err = capsys.readouterr().err
    assert "3 windows, 0 cut(s), 3 parts over 3 workers" in err and "attempt 1 failed (error [FAILED]: worker lost)" in err
    assert "3/3 parts, frames 27/27 (100%), 1 retried" in err
    want, got = frames_of(single), frames_of(fanned)
    assert got.shape == want.shape == (17, 32, 48, 3)
    np.testing.assert_array_equal(got, want)
    one, many = media.probe(single), media.probe(fanned)
    assert (many.frames, many.fps, many.has_audio) == (one.frames, one.fps, True)
    assert len(list(parts.glob("part-*.npz"))) == 3

    def no_parts(self, body):
        assert "windows" not in body["input"], "a stored part was submitted again"
        return submit(self, body)

    monkeypatch.setattr(client.Transport, "submit", no_parts)
    assert client.main([*common, "-o", str(again), "--workers", "2", "--parts", "3", "--resume", str(parts)]) == 0
    np.testing.assert_array_equal(frames_of(again), want)


def test_a_part_failing_every_time_fails_the_fan_out(env, tmp_path, monkeypatch, capsys):
    client = env["client"]
    submit = client.Transport.submit
    monkeypatch.setattr(
        client.Transport, "submit",
        lambda self, body: submit(self, {"input": {**body["input"], "res_h": 1}} if "windows" in body["input"] else body),
    )
    args = [str(env["video"]), "--url", env["server"].url, "--poll", "0.2", *SETTINGS, "--workers", "3", "--retries", "1"]
    assert client.main([*args, "-o", str(tmp_path / "out.mp4")]) == 1
    err = capsys.readouterr().err
    assert "failed 2 times; last error [FAILED]: res_h must be an integer between 64 and 4096" in err
    assert not (tmp_path / "out.mp4").exists()
