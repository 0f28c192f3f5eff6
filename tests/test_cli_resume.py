"""`python -m seedvr restore ... --resume DIR`: killed after its first window, the same command computes only
the missing windows, and the file equals an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mediagen import make_video
from seedvr import media
from tiny import write_tiny_setup
from worker_helpers import ROOT

pytestmark = pytest.mark.slow  # three CLI runs in subprocesses


def run(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "seedvr", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    config_dir, ckpt_dir = write_tiny_setup(tmp_path / "tiny")
    src = make_video(tmp_path / "in.mp4", frames=17, width=48, height=32)
    setup = ["--config-dir", str(config_dir), "--ckpt-dir", str(ckpt_dir), "--device", "cpu"]
    settings = ["--scale", "1", "--batch-frames", "5", "--overlap-frames", "1", "--crf", "0", *setup]  # 4 windows
    folder = tmp_path / "resume"

    killed = run(["restore", str(src), str(tmp_path / "out.mp4"), "--resume", str(folder), *settings])
    deadline = time.monotonic() + 600
    while not list(folder.glob("window-*.npz")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    kept = len(list(folder.glob("window-*.npz")))
    assert 1 <= kept < 4 and not (tmp_path / "out.mp4").exists()

    resumed = run(["restore", str(src), str(tmp_path / "out.mp4"), "--resume", str(folder), *settings])
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resume: {kept} of 4 windows taken from {folder}" in out
    whole = run(["restore", str(src), str(tmp_path / "whole.mp4"), *settings])
    assert whole.communicate(timeout=600) and whole.returncode == 0
    got, want = (np.concatenate(list(media.iter_video(tmp_path / name, 8))) for name in ("out.mp4", "whole.mp4"))
    assert got.shape == (17, 32, 48, 3)
    np.testing.assert_array_equal(got, want)
    assert media.probe(tmp_path / "out.mp4").has_audio
