"""`python -m seedvr restore ... --resume DIR`: killed after its first window, the same command computes only
the missing windows, and the file equals an uninterrupted run's."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mediagen import make_video
from seedvr import media
from tiny import write_tiny_setup
from worker_helpers import ROOT

pytestmark = pytest.mark.slow  # three CLI runs in subprocesses


# The CLI, crashing (SIGKILL to itself) right after its first window is stored: a kill at that point
# every time, whatever the machine's speed.
CRASH_AFTER_FIRST_WINDOW = """
import os, signal, sys
from seedvr.pipeline import parts
keep = parts.WindowStore.put
def put(self, part):
    keep(self, part)
    os.kill(os.getpid(), signal.SIGKILL)
parts.WindowStore.put = put
from seedvr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(args: list[str], crash: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["-c", CRASH_AFTER_FIRST_WINDOW] if crash else ["-m", "seedvr"]
    return subprocess.Popen([sys.executable, *command, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    config_dir, ckpt_dir = write_tiny_setup(tmp_path / "tiny")
    src = make_video(tmp_path / "in.mp4", frames=17, width=48, height=32)
    setup = ["--config-dir", str(config_dir), "--ckpt-dir", str(ckpt_dir), "--device", "cpu"]
    settings = ["--scale", "1", "--batch-frames", "5", "--overlap-frames", "1", "--crf", "0", *setup]  # 4 windows
    folder = tmp_path / "resume"

    killed = run(["restore", str(src), str(tmp_path / "out.mp4"), "--resume", str(folder), *settings], crash=True)
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err
    kept = len(list(folder.glob("window-*.npz")))
    assert kept == 1 and not (tmp_path / "out.mp4").exists()  # the video is renamed into place only when complete

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
