"""Streaming: peak RSS must not grow with the length of the video."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mediagen import make_video

TESTS = Path(__file__).resolve().parent
CHILD = """
import json, resource, sys
sys.path[:0] = [{tests!r}, {root!r}]
from tiny import tiny_models
from seedvr.pipeline import RestoreOptions, restore_file
options = RestoreOptions(res_h=32, res_w=56, batch_frames=9, overlap_frames=1, color_fix="none")
result = restore_file(sys.argv[1], sys.argv[2], tiny_models(), options)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_mb": peak_mb, "frames": result.frames, "timings": result.timings}}))
"""


def _peak_rss(src: Path, dst: Path) -> dict:
    code = CHILD.format(tests=str(TESTS), root=str(TESTS.parent))
    done = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_video_length(tmp_path):
    """960x540 input (1.55 MB per decoded frame) restored at a tiny size, so that holding the clip
    would show: the long clip has 72 more frames, 112 MB as uint8, 448 MB as float. Allocator and
    codec buffer pools settle during the first windows (measured: +30..60 MB, then flat); with the
    decoder one window ahead in its own thread (and malloc arena) that takes about five windows, so
    the short clip has six."""
    short = make_video(tmp_path / "short.mp4", frames=48, width=960, height=540, with_audio=False)
    long = make_video(tmp_path / "long.mp4", frames=120, width=960, height=540, with_audio=False)
    a = _peak_rss(short, tmp_path / "short_out.mp4")
    b = _peak_rss(long, tmp_path / "long_out.mp4")
    print(f"peak RSS: 48 frames {a['peak_mb']:.0f} MB, 120 frames {b['peak_mb']:.0f} MB")
    assert (a["frames"], b["frames"]) == (48, 120)
    assert b["peak_mb"] - a["peak_mb"] < 50
