"""User mode with the tiny models: files in and out, sizes, windows, determinism, progress, cancel."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from mediagen import make_image, make_video, pattern
from seedvr import media
from seedvr.pipeline import Cancelled, RestoreOptions, make_plan, restore_file, restore_frames
from seedvr.pipeline.restore import Stages, auto_window, choose_tiling
from seedvr.pipeline.tiling import Tiling
from tiny import tiny_models


@pytest.fixture(scope="module")
def models():
    return tiny_models("3b")


@pytest.fixture(scope="module")
def video_run(models, tmp_path_factory):
    """One 9-frame 60x40 clip with audio at 24 fps, restored in two windows of 5 frames."""
    folder = tmp_path_factory.mktemp("video")
    src = make_video(folder / "in.mp4", frames=9, width=60, height=40, fps=Fraction(24))
    events = []
    options = RestoreOptions(res_h=48, res_w=64, batch_frames=5, overlap_frames=1)
    result = restore_file(src, folder / "out.mp4", models, options, progress=events.append)
    return src, result, events


def test_video_keeps_frames_fps_audio_and_aspect(video_run):
    src, result, _ = video_run
    info = media.probe(result.path)
    assert (info.kind, info.frames, info.fps, info.has_audio) == ("video", 9, Fraction(24), True)
    # area rule: 40x60 -> about 48*64 pixels, aspect kept, even; no edge cropped to the 16-grid
    assert (info.width, info.height) == result.output_size == (68, 44)
    assert result.input_size == (60, 40) and result.frames == 9 and result.fps == 24.0
    assert abs(68 / 44 - 60 / 40) < 0.05
    assert {"decode", "encode", "dit", "vae_decode", "write", "total"} <= set(result.timings)


def test_progress_events_count_windows_and_frames(video_run):
    _, _, events = video_run
    assert [e.stage for e in events[:3]] == ["encode", "dit", "vae_decode"]
    assert {e.windows for e in events} == {2}
    assert [e.window for e in events if e.stage == "encode"] == [1, 2]
    done = [e.frames_done for e in events]
    assert done == sorted(done) and events[-1].stage == "done" and done[-1] == events[-1].frames_total == 9


def test_image_in_image_out(models, tmp_path):
    src = make_image(tmp_path / "in.png", width=30, height=20)
    result = restore_file(src, tmp_path / "out.png", models, RestoreOptions(scale=2.0, color_fix="adain"))
    info = media.probe(result.path)
    assert (info.kind, info.width, info.height) == ("image", 60, 40)
    assert result.media_type == "image" and result.frames == 1 and result.fps is None
    out = media.read_image(tmp_path / "out.png")
    assert out.shape == (40, 60, 3)
    jpg = restore_file(src, tmp_path / "out.jpg", models, RestoreOptions(scale=1.0), output_format="jpg")
    assert media.probe(jpg.path).kind == "image" and jpg.output_size == (30, 20)


def test_image_ignores_temporal_settings(models, tmp_path):
    """batch_frames/overlap_frames describe video windows; an image is one frame whatever they say."""
    src = make_image(tmp_path / "in.png", width=30, height=20)
    options = RestoreOptions(scale=1.0, batch_frames=9, overlap_frames=2)
    plan = make_plan(20, 30, 1, models, options)
    assert (plan.window, plan.overlap) == (1, 0)
    assert restore_file(src, tmp_path / "out.png", models, options).frames == 1


def test_media_type_mismatch_is_refused(models, tmp_path):
    src = make_image(tmp_path / "in.png", width=16, height=16)
    with pytest.raises(media.MediaError, match="media_type"):
        restore_file(src, tmp_path / "out.mp4", models, RestoreOptions(scale=1.0), media_type="video")


def _restore_array(models, clip: np.ndarray, options: RestoreOptions) -> np.ndarray:
    plan = make_plan(*clip.shape[1:3], len(clip), models, options)
    stages = Stages("cpu", plan.windows, len(clip))
    return np.concatenate(list(restore_frames([clip[:3], clip[3:]], models, options, plan, stages)))


def test_same_seed_same_bytes_other_seed_differs(models):
    clip = np.stack([pattern(i, 32, 16) for i in range(6)])
    options = RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=2, seed=7)
    first = _restore_array(models, clip, options)
    assert first.shape == (6, 16, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(_restore_array(models, clip, options), first)
    other = _restore_array(models, clip, RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=2, seed=8))
    assert np.abs(other.astype(int) - first.astype(int)).mean() > 1


def test_cancel_between_windows_removes_the_output(models, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=9, width=32, height=16)
    dst = tmp_path / "out.mp4"
    events = []

    def cancel_after_first_window() -> bool:
        return any(e.stage == "vae_decode" for e in events)

    options = RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=1)
    with pytest.raises(Cancelled, match="window 2 of 2"):
        restore_file(src, dst, models, options, progress=events.append, should_cancel=cancel_after_first_window)
    assert not dst.exists()
    assert [e.window for e in events if e.stage == "encode"] == [1]


def test_options_are_validated():
    with pytest.raises(ValueError, match="batch_frames"):
        RestoreOptions(batch_frames=8)
    with pytest.raises(ValueError, match="overlap_frames"):
        RestoreOptions(batch_frames=5, overlap_frames=5)
    with pytest.raises(ValueError, match="color_fix"):
        RestoreOptions(color_fix="lab")
    with pytest.raises(ValueError, match="vae_tile"):
        RestoreOptions(vae_tile=100)
    with pytest.raises(ValueError, match="scale"):
        RestoreOptions(scale=0)


def test_plan_pads_to_the_grid(models):
    plan = make_plan(360, 640, 300, models, RestoreOptions(res_h=1280, res_w=720, batch_frames=21, vae_tile=0))
    assert plan.size == (720, 1280) and plan.pads == (0, 0, 0, 0) and plan.tiling is None
    assert (plan.window, plan.overlap, plan.windows) == (21, 5, 19)
    odd = make_plan(45, 61, 1, models, RestoreOptions(scale=1.0))
    assert odd.size == (44, 60) and odd.padded_size == (48, 64) and odd.window == 1 and odd.overlap == 0


def test_auto_window_and_tiling_follow_the_memory_budget():
    budget = 49 << 30  # 70% of the free memory of an 80 GB GPU holding the 3B model
    assert choose_tiling(None, (720, 1280), budget, torch.bfloat16) is None
    assert auto_window((720, 1280), None, budget, torch.bfloat16) == 101
    full_hd = auto_window((1088, 1920), None, budget, torch.bfloat16)
    assert 5 < full_hd < 101 and (full_hd - 1) % 4 == 0
    uhd = choose_tiling(None, (2160, 3840), budget, torch.bfloat16)
    assert uhd == Tiling(512, 128) and auto_window((2160, 3840), uhd, budget, torch.bfloat16) > 5
    assert auto_window((720, 1280), None, 1 << 30, torch.float32) == 5  # never below 5 frames
    assert choose_tiling(0, (2160, 3840), budget, torch.bfloat16) is None
    assert choose_tiling(256, (64, 64), budget, torch.bfloat16) == Tiling(256, 64)


def test_fps_override_keeps_every_frame(models, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=5, width=32, height=16, fps=Fraction(25))
    result = restore_file(src, tmp_path / "out.mp4", models, RestoreOptions(scale=1.0), fps=12.5, keep_audio=False)
    info = media.probe(result.path)
    assert (info.frames, info.fps, info.has_audio, result.fps) == (5, Fraction(25, 2), False, 12.5)
