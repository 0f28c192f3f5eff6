"""Window parts: what a fanned-out worker returns and a resume folder keeps, exact for stitching."""

import numpy as np
import pytest
import torch

from seedvr.pipeline.geometry import to_uint8_hwc
from seedvr.pipeline.parts import WindowPart, WindowStore, from_uint8_hwc, iter_parts, save_parts, stitch
from seedvr.pipeline.parts import final_frames

SPANS = [(0, 9), (4, 13), (8, 17)]  # frame 8 lies in all three windows


def outputs(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(stop - start, 3, 4, 6, generator=g) * 2.2 - 1.1 for start, stop in SPANS]  # unclamped


def test_uint8_frames_come_back_as_floats_that_quantise_to_themselves():
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    np.testing.assert_array_equal(to_uint8_hwc(from_uint8_hwc(levels)).numpy(), levels)


def test_a_part_keeps_shared_frames_in_float_and_the_rest_final():
    out = outputs()
    parts = [WindowPart.of(i, SPANS, y) for i, y in enumerate(out)]
    assert [(len(p.lead), len(p.middle), len(p.trail)) for p in parts] == [(0, 4, 5), (5, 0, 4), (5, 4, 0)]
    assert torch.equal(parts[1].frames()[:5], out[1][:5]) and torch.equal(parts[0].trail, out[0][4:])


def test_stitched_parts_equal_one_run(tmp_path):
    """Windows saved over two part files and stitched give the bytes of crossfading the outputs in one run."""
    out = outputs()
    want = np.concatenate(list(final_frames(zip((s for s, _ in SPANS), out), overlap=5)))
    parts = [WindowPart.of(i, SPANS, y) for i, y in enumerate(out)]
    files = [save_parts(tmp_path / "a.npz", parts[:1], {}), save_parts(tmp_path / "b.npz", parts[1:], {})]
    assert [p.index for p in iter_parts(files[1])] == [1, 2]
    got = np.concatenate(list(stitch(files, SPANS, overlap=5)))
    assert got.shape == (17, 4, 6, 3)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="where the plan has window 1"):
        list(stitch([files[0], tmp_path / "a.npz"], SPANS, overlap=5))
    with pytest.raises(ValueError, match="the parts hold 1 windows, the plan 3"):
        list(stitch(files[:1], SPANS, overlap=5))


def test_a_store_drops_windows_of_another_run(tmp_path):
    part = WindowPart.of(0, SPANS, outputs()[0])
    store = WindowStore(tmp_path, {"model": "3b"})
    store.bind({"input_sha256": "abc", "plan": {"spans": [(0, 9)]}})
    store.put(part)
    again = WindowStore(tmp_path, {"model": "3b"})
    again.bind({"input_sha256": "abc", "plan": {"spans": [(0, 9)]}})
    assert torch.equal(again.get(0).frames(), part.frames()) and again.reused == 1
    for identity, key in [({"model": "7b"}, {"input_sha256": "abc", "plan": {"spans": [(0, 9)]}}),
                          ({"model": "3b"}, {"input_sha256": "abd", "plan": {"spans": [(0, 9)]}})]:
        store.put(part)
        other = WindowStore(tmp_path, identity)
        other.bind(key)
        assert other.get(0) is None and not list(tmp_path.glob("window-*.npz"))
