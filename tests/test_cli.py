"""`python -m seedvr restore` end to end with the tiny models laid out like the real ones."""

import subprocess
import sys
from fractions import Fraction

import pytest

from mediagen import make_image, make_video
from seedvr import media
from seedvr.cli import main
from tiny import write_tiny_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config_dir, ckpt_dir = write_tiny_setup(tmp_path_factory.mktemp("tiny"))
    return ["--config-dir", str(config_dir), "--ckpt-dir", str(ckpt_dir), "--device", "cpu"]


def test_video_end_to_end_keeps_frames_fps_audio_aspect(setup, tmp_path, capsys):
    src = make_video(tmp_path / "in.mp4", frames=9, width=32, height=18, fps=Fraction(30000, 1001))
    dst = tmp_path / "out.mp4"
    args = ["restore", str(src), str(dst), "--res-h", "36", "--res-w", "64", "--batch-frames", "5"]
    assert main([*args, "--overlap-frames", "1", "--seed", "3", *setup]) == 0
    info = media.probe(dst)
    assert (info.kind, info.frames, info.fps, info.has_audio) == ("video", 9, Fraction(30000, 1001), True)
    assert (info.width, info.height) == (64, 36)
    summary = capsys.readouterr().out
    assert "32x18 -> 64x36, 9 frame(s) at 29.970 fps" in summary
    assert "timings:" in summary and "dit" in summary and "seedvr2_3b (normal)" in summary


def test_image_end_to_end_with_the_7b_sharp_variant(setup, tmp_path, capsys):
    src = make_image(tmp_path / "in.png", width=24, height=16)
    dst = tmp_path / "out.png"
    assert main(["restore", str(src), str(dst), "--scale", "2", "--model", "7b", "--variant", "sharp", *setup]) == 0
    info = media.probe(dst)
    assert (info.kind, info.width, info.height) == ("image", 48, 32)
    assert "seedvr2_7b (sharp)" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_1(setup, tmp_path, capsys):
    src = make_image(tmp_path / "in.png", width=16, height=16)
    assert main(["restore", str(src), str(tmp_path / "o.png"), "--variant", "sharp", *setup]) == 1
    assert "--variant sharp does not exist for --model 3b" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["restore", str(src), str(tmp_path / "o.png"), *setup, "--ckpt-dir", str(empty)]) == 1
    assert "seedvr2_ema_3b.pth not found" in capsys.readouterr().err
    assert main(["restore", str(src), str(tmp_path / "o.png"), "--batch-frames", "8", *setup]) == 1
    assert "batch_frames must be a 4n+1 number" in capsys.readouterr().err


def test_module_entry_point_shows_help():
    done = subprocess.run([sys.executable, "-m", "seedvr", "restore", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--batch-frames" in done.stdout and "--color-fix" in done.stdout
