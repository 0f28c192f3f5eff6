"""Scene cuts: each shot is planned on its own, so no frame of one shot depends on another shot."""

from pathlib import Path

import av
import numpy as np
import pytest

from mediagen import pattern
from seedvr import media
from seedvr.pipeline import RestoreOptions, restore_file
from seedvr.pipeline.restore import plan_file
from tiny import tiny_models

W, H = 48, 32
SHOT_A = [pattern(i, W, H) for i in range(8)]
SHOT_A2 = [255 - frame for frame in SHOT_A]  # same length, other content
SHOT_B = [np.ascontiguousarray(np.roll(pattern(i + 40, W, H), 1, axis=-1)[::-1]) for i in range(9)]


def lossless_video(path: Path, frames: list[np.ndarray]) -> Path:
    """FFV1 in Matroska: decoded frames equal `frames`, so both clips' shot B are the same input bytes."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "bgr0"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def decoded(path: Path) -> np.ndarray:
    return np.concatenate(list(media.iter_video(path, 8)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shots")
    return lossless_video(folder / "ab.mkv", SHOT_A + SHOT_B), lossless_video(folder / "a2b.mkv", SHOT_A2 + SHOT_B)


def restored(src: Path, tmp_path: Path, scene_cuts: bool) -> np.ndarray:
    options = RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=1, scene_cuts=scene_cuts)
    out = restore_file(src, tmp_path / f"{src.stem}-{scene_cuts}.mp4", tiny_models("3b"), options, crf=0)
    return decoded(out.path)


def test_the_cut_is_found_and_planned_around(clips):
    ab, _ = clips
    np.testing.assert_array_equal(decoded(ab)[8:], np.stack(SHOT_B))
    _, _, plan = plan_file(ab, tiny_models("3b"), RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=1))
    assert plan.frames == 17 and plan.cuts == (8,)
    assert plan.spans == [(0, 5), (4, 8), (8, 13), (12, 17)]
    _, _, off = plan_file(ab, tiny_models("3b"), RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=1, scene_cuts=False))
    assert off.cuts == () and (4, 9) in off.spans  # a window across the cut


def test_shot_b_does_not_depend_on_shot_a(clips, tmp_path):
    """Restore AB and A'B (only the first shot differs): the frames of shot B are identical. Without
    scene cuts a window and a crossfade cross the cut, and shot B's frames differ."""
    ab, a2b = clips
    with_cuts = restored(ab, tmp_path, True), restored(a2b, tmp_path, True)
    assert with_cuts[0].shape == (17, H, W, 3)
    assert np.abs(with_cuts[0][:8].astype(int) - with_cuts[1][:8]).mean() > 10  # the first shots differ
    np.testing.assert_array_equal(with_cuts[0][8:], with_cuts[1][8:])
    without = restored(ab, tmp_path, False), restored(a2b, tmp_path, False)
    assert not np.array_equal(without[0][8:], without[1][8:])
