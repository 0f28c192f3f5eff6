"""Temporal windows, 4n+1 padding, crossfade, and the seam metric on a synthetic clip."""

import numpy as np
import pytest
import torch

from mediagen import pattern
from seedvr.pipeline import RestorationModels, RestoreOptions, make_plan, restore, restore_frames
from seedvr.pipeline.temporal import (
    Crossfade,
    default_overlap,
    detect_cuts,
    iter_windows,
    join_windows,
    pad_to_4n1,
    padded_length,
    plan_windows,
)

CLIP = np.stack([pattern(i, 64, 48) for i in range(33)])  # smooth motion, 48x64


def test_padded_length_follows_official_cut():
    assert [padded_length(n) for n in (1, 2, 3, 4, 5, 6, 8, 9, 10, 21, 22)] == [1, 5, 5, 5, 5, 9, 9, 9, 13, 21, 25]
    x = torch.arange(6.0)
    assert pad_to_4n1(x).tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5]
    assert pad_to_4n1(torch.arange(8.0)).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 7]  # one frame short
    assert pad_to_4n1(torch.zeros(3, 1, 2), dim=1).shape == (3, 1, 2)  # one frame stays one
    video = torch.arange(2 * 3 * 4.0).view(2, 3, 4)  # [C, T, W]: pad along dim 1, other sizes kept
    padded = pad_to_4n1(video, dim=1)
    assert padded.shape == (2, 5, 4)
    assert torch.equal(padded[:, :3], video) and torch.equal(padded[:, 3:], video[:, 2:].expand(2, 2, 4))


def test_default_overlap_keeps_the_stride_a_multiple_of_four():
    assert [default_overlap(w) for w in (1, 5, 9, 13, 101)] == [0, 1, 5, 5, 5]


@pytest.mark.parametrize(
    "total, window, overlap", [(33, 9, 5), (33, 13, 1), (7, 21, 5), (9, 9, 4), (10, 5, 0), (1, 5, 1)]
)
def test_windows_cover_the_stream_once_in_order(total, window, overlap):
    chunks = [CLIP[i : min(i + 4, total)] for i in range(0, total, 4)]
    windows = list(iter_windows(chunks, plan_windows(total, window, overlap)))
    assert [(s, s + len(f)) for s, f in windows] == plan_windows(total, window, overlap)
    for start, frames in windows:
        assert len(frames) <= window
        np.testing.assert_array_equal(frames, CLIP[start : start + len(frames)])
    assert windows[-1][0] + len(windows[-1][1]) == total


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="4n\\+1"):
        plan_windows(20, 8, 2)
    with pytest.raises(ValueError, match="overlap_frames must be between 0 and batch_frames - 1 = 8, got 9"):
        plan_windows(20, 9, 9)


def test_a_window_leaves_as_soon_as_its_frames_have_arrived():
    """Streaming: the first window is yielded before the next chunk is read, so only one window waits."""
    pulled = []

    def chunks():
        for i in range(3):
            pulled.append(i)
            yield CLIP[9 * i : 9 * i + 9]

    spans = plan_windows(27, 9, 1)
    windows = iter_windows(chunks(), spans)
    start, frames = next(windows)
    assert (start, start + len(frames), pulled) == (*spans[0], [0])


def test_crossfade_weights_are_linear_and_sum_to_one():
    """Both windows carry distinct values, so each one's weight shows: the earlier window's frames
    6, 7, 8 (values 6, 7, 8) meet the later window's first three (100, 110, 120) with the later weight
    1/4, 2/4, 3/4."""
    fade = Crossfade(overlap=3)
    first = fade.push(0, torch.arange(9.0).view(9, 1))
    assert first[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    second = fade.push(6, (100 + 10 * torch.arange(7.0)).view(7, 1))
    assert second[:, 0].tolist() == pytest.approx([29.5, 58.5, 92.0, 130.0])
    assert fade.finish()[:, 0].tolist() == [140.0, 150.0, 160.0]
    assert fade.finish() is None
    fade = Crossfade(overlap=3)
    fade.push(0, torch.zeros(9, 1))
    with pytest.raises(ValueError, match="window of 4 frames at 5 does not cover the 3 held frames at 6"):
        fade.push(5, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="held frames"):
        fade.push(6, torch.zeros(2, 1))
    assert fade.push(6, torch.ones(3, 1))[:, 0].tolist() == []  # exactly the held frames: blended, held again
    assert fade.finish()[:, 0].tolist() == pytest.approx([0.25, 0.5, 0.75])


def test_crossfade_weights_follow_the_frames_dtype_and_device():
    """Exact thirds in float64 (a float32 weight would round them), and the weights are made on the
    frames' device, not the default one (meta as the default shows it without a GPU)."""
    with torch.device("meta"):
        fade = Crossfade(overlap=2)
        fade.push(0, torch.zeros(4, 1, dtype=torch.float64, device="cpu"))
        out = fade.push(2, torch.ones(4, 1, dtype=torch.float64, device="cpu"))
    assert out.device.type == "cpu" and out.dtype == torch.float64
    assert out[:, 0].tolist() == [1 / 3, 2 / 3]


def _jumps(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference between consecutive frames (levels of 255)."""
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def _run_with_window_offsets(monkeypatch, window: int, overlap: int, offset: float) -> np.ndarray:
    """Restore CLIP with a stand-in for the model: each window returns its input plus its own colour
    offset (+offset, -offset, ...), the typical disagreement of two windows. The real streaming,
    windowing and crossfade code runs."""
    calls = iter(range(1000))

    def fake_window(frames, models, options, plan, first_frame, stages):
        sign = 1 if next(calls) % 2 == 0 else -1
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x + sign * offset

    monkeypatch.setattr(restore, "restore_window", fake_window)
    models = RestorationModels(dit=None, vae=None, text_emb=None)
    options = RestoreOptions(res_h=48, res_w=64, batch_frames=window, overlap_frames=overlap, color_fix="none")
    plan = make_plan(48, 64, len(CLIP), models, options)
    stages = restore.Stages("cpu", plan.windows, len(CLIP))
    chunks = [CLIP[i : i + 8] for i in range(0, len(CLIP), 8)]
    return np.concatenate(list(restore_frames(chunks, models, options, plan, stages)))


def test_streaming_windows_are_aligned(monkeypatch):
    out = _run_with_window_offsets(monkeypatch, 9, 5, offset=0.0)
    assert out.shape == CLIP.shape
    assert np.abs(out.astype(int) - CLIP.astype(int)).max() <= 1  # only the float round trip


def test_seam_metric_crossfade_hides_window_borders(monkeypatch):
    """Seam metric: frame-to-frame jump at a window border divided by the jump of the same two frames
    in a single-window run (which has no border). A hard cut shows the windows' disagreement at once;
    the crossfade spreads it over overlap + 1 transitions."""
    single = _jumps(_run_with_window_offsets(monkeypatch, 41, 0, offset=0.08))
    hard = _jumps(_run_with_window_offsets(monkeypatch, 9, 0, offset=0.08))
    faded = _jumps(_run_with_window_offsets(monkeypatch, 9, 5, offset=0.08))
    hard_borders = [8, 17, 26]  # transitions between the last frame of a window and the next window
    hard_ratio = (hard[hard_borders] / single[hard_borders]).max()
    faded_ratio = (faded / single).max()  # every transition, borders and blends included
    inside = [t for t in range(len(single)) if t not in hard_borders]
    assert np.allclose(hard[inside], single[inside], atol=0.5)
    print(f"seam ratio: hard {hard_ratio:.3f}, crossfaded {faded_ratio:.3f}")
    assert hard_ratio > 1.7  # the metric sees a seam when there is one (measured 1.83)
    assert faded_ratio < 1.22  # the crossfade keeps every transition close to the seamless run (measured 1.197)


@pytest.mark.parametrize(
    "window, overlap", [(5, 0), (5, 1), (5, 4), (9, 0), (9, 5), (13, 1), (17, 0), (17, 3), (21, 5), (33, 8), (101, 5)]
)
def test_windows_are_balanced_for_every_length(window, overlap):
    """Over 1..400 frames: the fewest windows, each within the limit, covering every frame with the exact
    overlap; 4n+1 lengths (so strides keep their phase) that differ by at most one VAE group; no
    one-frame window in a video."""
    for total in range(1, 401):
        spans = plan_windows(total, window, overlap)
        lengths = [stop - start for start, stop in spans]
        assert spans[0][0] == 0 and spans[-1][1] == total
        assert all(b[0] == a[1] - overlap for a, b in zip(spans, spans[1:])), spans
        assert len(spans) == max(1, -(-(total - overlap) // (window - overlap))), spans
        assert max(lengths) <= window
        if total > 1:
            assert min(lengths) >= 2, spans
        padded = [padded_length(n) for n in lengths]
        assert max(padded) - min(padded) <= 4, spans
        assert lengths[-1] >= lengths[0] - 3, spans  # never a long run and then a short tail
        if (window, overlap) != (5, 0):
            assert all(n % 4 == 1 for n in lengths[:-1]), spans


def test_balanced_windows_examples():
    assert plan_windows(102, 101, 5) == [(0, 53), (48, 102)]  # not (0, 101) + (96, 102)
    assert plan_windows(18, 17, 0) == [(0, 9), (9, 18)]  # not a lone 18th frame
    assert plan_windows(6, 5, 0) == [(0, 3), (3, 6)]
    assert plan_windows(7, 21, 5) == [(0, 7)]


def test_shots_are_planned_on_their_own():
    spans = plan_windows(40, 9, 5, cuts=[20, 27])
    assert spans[:4] == plan_windows(20, 9, 5)
    assert [(a - 20, b - 20) for a, b in spans[4:5]] == plan_windows(7, 9, 5)
    assert [(a - 27, b - 27) for a, b in spans[5:]] == plan_windows(13, 9, 5)
    assert not any(a < cut < b for a, b in spans for cut in (20, 27))
    with pytest.raises(ValueError, match="cuts"):
        plan_windows(40, 9, 5, cuts=[27, 20])


def test_cut_detection_threshold_and_flashes():
    dark, bright = np.full((32, 32), 40, np.uint8), np.full((32, 32), 200, np.uint8)
    drift = [dark + i for i in range(10)]  # 1 level per frame: motion, not a cut
    assert detect_cuts(drift) == ([], 10)
    assert detect_cuts(drift + [bright] * 8) == ([10], 18)
    assert detect_cuts([dark] * 10 + [dark + 31] * 6) == ([10], 16)  # just over CUT_THRESHOLD (30)
    assert detect_cuts([dark] * 10 + [dark + 30] * 6) == ([], 16)
    flash = [dark] * 10 + [bright] * 2 + [dark] * 10  # the change back 2 frames later is no second cut
    assert detect_cuts(flash) == ([10], 22)
    assert detect_cuts([dark] * 10 + [bright] * 3) == ([], 13)  # a last shot shorter than MIN_SHOT


def test_join_windows_restarts_at_a_cut():
    """Two shots: the first window of the second shot is not blended with the end of the first."""
    joined = torch.cat(list(join_windows([(0, torch.zeros(5, 1)), (3, torch.ones(4, 1)), (7, torch.full((5, 1), 5.0))], 2)))
    assert joined[:, 0].tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 5, 5, 5, 5, 5])
