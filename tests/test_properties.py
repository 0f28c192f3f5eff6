"""Property tests (hypothesis): geometry, window plans and request round trips hold for every input, not
only for the handful of sizes the example tests pick."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seedvr.pipeline import geometry
from seedvr.pipeline.temporal import (
    Crossfade,
    default_overlap,
    floor_4n1,
    iter_windows,
    padded_length,
    plan_windows,
)
from seedvr.worker.errors import WorkerError
from seedvr.worker.schema import parse_request

FAST = settings(max_examples=60, deadline=None)
sizes = st.integers(min_value=1, max_value=4096)
windows = st.integers(min_value=0, max_value=30).map(lambda n: 4 * n + 1)


# ------------------------------------------------------------------------------------------ geometry


@FAST
@given(height=sizes, width=sizes, res_h=st.integers(64, 4096), res_w=st.integers(64, 4096))
def test_output_size_is_even_with_the_requested_area_and_aspect(height, width, res_h, res_w):
    """Each side is the exact area-preserving side rounded (up to 0.5 away), then made even (up to 1 less),
    but never below 2."""
    out_h, out_w = geometry.output_size(height, width, res_h, res_w)
    assert out_h % 2 == out_w % 2 == 0 and out_h >= 2 and out_w >= 2
    scale = math.sqrt(res_h * res_w / (height * width))
    for side, exact in ((out_h, height * scale), (out_w, width * scale)):
        assert exact - 1.5 - 1e-6 <= side <= max(2, exact + 0.5 + 1e-6)


@FAST
@given(height=sizes, width=sizes, scale=st.floats(0.25, 16))
def test_scaled_size_is_even_and_follows_the_scale(height, width, scale):
    out_h, out_w = geometry.output_size(height, width, 0, 0, scale=scale)
    assert out_h % 2 == out_w % 2 == 0
    for side, exact in ((out_h, height * scale), (out_w, width * scale)):
        assert exact - 1.5 - 1e-6 <= side <= max(2, exact + 0.5 + 1e-6)


@FAST
@given(height=st.integers(1, 80), width=st.integers(1, 80))
def test_grid_padding_is_centred_and_undone_exactly(height, width):
    left, right, top, bottom = pads = geometry.grid_padding(height, width)
    assert (height + top + bottom) % 16 == 0 and (width + left + right) % 16 == 0
    assert 0 <= left <= right <= left + 1 and 0 <= top <= bottom <= top + 1 and right < 16 and bottom < 16
    frames = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * 100 + width))
    padded = geometry.pad_to_grid(frames, pads)
    assert padded.shape[-2:] == (height + top + bottom, width + left + right)
    assert torch.equal(geometry.unpad(padded, pads), frames)
    assert torch.equal(padded[..., :top, left : left + width], frames[..., :1, :].expand(-1, -1, top, -1))


@FAST
@given(height=st.integers(16, 80), width=st.integers(16, 80))
def test_centre_crop_keeps_the_middle_on_the_grid(height, width):
    frames = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    crop = geometry.center_crop_to_grid(frames)
    crop_h, crop_w = crop.shape[-2:]
    assert crop_h == height - height % 16 and crop_w == width - width % 16
    top, left = divmod(int(crop[0, 0, 0, 0].item()), width)
    assert top == round((height - crop_h) / 2) and left == round((width - crop_w) / 2)


# ------------------------------------------------------------------------------------------ windows


@st.composite
def window_settings(draw):
    window = draw(windows)
    overlap = draw(st.integers(0, window - 1))
    return draw(st.integers(1, 120)), window, overlap


@FAST
@given(window_settings())
def test_window_plan_covers_every_frame_in_order(case):
    total, window, overlap = case
    spans = plan_windows(total, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == total
    for (start, stop), (next_start, next_stop) in zip(spans, spans[1:]):
        assert start < next_start <= stop < next_stop  # consecutive, overlapping or touching, advancing
        assert stop - next_start <= overlap
    assert all(0 < stop - start <= window for start, stop in spans)


@FAST
@given(window_settings(), st.lists(st.integers(1, 13), min_size=1, max_size=40))
def test_streamed_windows_and_crossfade_give_every_frame_once(case, chunk_sizes):
    """Frames carry their index as value: windows cut from any chunking match the plan, and the crossfade
    (weights summing to one) returns each frame exactly once, in order."""
    total, window, overlap = case
    frames = np.arange(total, dtype=np.float32)
    bounds = np.cumsum([0, *chunk_sizes])
    chunks = [frames[a:b] for a, b in zip(bounds, bounds[1:]) if a < total] + [frames[bounds[-1] :]]
    chunks = [c for c in chunks if len(c)]
    spans = plan_windows(total, window, overlap)
    cut = list(iter_windows(chunks, spans))
    assert [(start, start + len(w)) for start, w in cut] == spans
    fade = Crossfade(overlap)
    out = [fade.push(start, torch.from_numpy(w.copy())) for start, w in cut]
    tail = fade.finish()
    joined = torch.cat([*out, *([tail] if tail is not None else [])])
    torch.testing.assert_close(joined, torch.from_numpy(frames), atol=1e-4, rtol=0)


@FAST
@given(total=st.integers(1, 200), window=st.integers(1, 30).map(lambda n: 4 * n + 1))
def test_default_overlap_keeps_every_window_in_the_vae_phase(total, window):
    """With the default overlap the stride is a multiple of 4, so every window starts on a 4-frame group
    boundary of the whole clip, and each window is padded to 4n+1 by at most 3 frames."""
    overlap = default_overlap(window)
    spans = plan_windows(total, window, overlap)
    assert all(start % 4 == 0 for start, _ in spans)
    assert all(padded_length(stop - start) - (stop - start) <= 3 for start, stop in spans if stop - start > 1)
    assert overlap == (1 if window == 5 else 5)


@FAST
@given(n=st.integers(1, 500))
def test_floor_4n1_is_the_largest_4n1_not_above(n):
    floor = floor_4n1(n)
    assert (floor - 1) % 4 == 0 and n - 4 < floor <= n


@FAST
@given(n=st.integers(1, 500))
def test_padded_length_is_the_next_4n1(n):
    length = padded_length(n)
    assert (length - 1) % 4 == 0 and length >= n and (length == 1 or length >= 5)
    assert length - n < 4 or n < 5


# ------------------------------------------------------------------------------------------ requests


INT_FIELDS = {
    "res_h": (64, 4096),
    "res_w": (64, 4096),
    "seed": (0, 2**32 - 1),
    "sample_steps": (1, 50),
    "crf": (0, 51),
    "sp_size": (1, 64),
    "overlap_frames": (0, 1000),
}
FLOAT_FIELDS = {"cfg_scale": (0, 20), "cfg_rescale": (0, 1), "fps": (0.1, 240)}


@st.composite
def restore_payloads(draw):
    payload = {"media_url": draw(st.sampled_from(["https://example.com/a.mp4", "http://cdn.example/v?x=1"]))}
    for name, (lo, hi) in INT_FIELDS.items():
        if draw(st.booleans()):
            payload[name] = draw(st.integers(lo, hi))
    for name, (lo, hi) in FLOAT_FIELDS.items():
        if draw(st.booleans()):
            payload[name] = draw(st.floats(lo, hi))
    if draw(st.booleans()):
        payload["batch_frames"] = draw(st.integers(0, 250).map(lambda n: 4 * n + 1))
        payload.setdefault("overlap_frames", 0)
        payload["overlap_frames"] = min(payload["overlap_frames"], payload["batch_frames"] - 1)
    if draw(st.booleans()):
        payload["color_fix"] = draw(st.sampled_from(["wavelet", "adain", "none"]))
    if draw(st.booleans()):
        payload["model_type"] = "seedvr2_7b"
        payload["model_variant"] = draw(st.sampled_from(["normal", "sharp"]))
    if draw(st.booleans()):
        payload["action"] = "restore"
    return payload


@FAST
@given(restore_payloads())
def test_valid_restore_requests_round_trip(payload):
    request = parse_request(payload)
    assert request.model_dump(exclude_unset=True) == payload
    assert parse_request(request.model_dump(exclude_none=True)) == request


@pytest.mark.parametrize("name", [*INT_FIELDS, *FLOAT_FIELDS])
@FAST
@given(offset=st.integers(1, 10**6))
def test_numbers_outside_their_range_are_refused_by_name(name, offset):
    lo, hi = {**INT_FIELDS, **FLOAT_FIELDS}[name]
    step = 1 if name in INT_FIELDS else 1e-3
    for value in (lo - offset * step, hi + offset * step, lo, hi):
        payload = {"media_url": "https://example.com/a.mp4", name: value}
        if lo <= value <= hi:
            assert getattr(parse_request(payload), name) == value
            continue
        with pytest.raises(WorkerError, match=f"^{name} must be an? (integer|number) between"):
            parse_request(payload)
