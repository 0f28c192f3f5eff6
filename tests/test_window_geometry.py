"""The NaDiT's 3-D attention windows at grid sizes and lengths the official fixtures do not reach, against
the loop reference (tests/dit_reference.py): past the 30-frame time cap, tiny and huge grids, portrait,
and windows that do not divide the grid."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dit_reference import _windows as reference_windows
from seedvr.models.windows import WINDOW_METHODS, make_windows
from test_dit import assert_matches_reference, tiny_config

REGULAR, SHIFTED = WINDOW_METHODS
GRIDS = [(1, 2, 2), (31, 4, 6), (40, 90, 160), (7, 160, 90), (13, 45, 80), (2, 2, 200), (33, 46, 82)]


def _as_extents(windows) -> list[tuple[tuple[int, int], ...]]:
    return [tuple((r.start, r.stop) for r in window) for window in windows]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("method", WINDOW_METHODS)
def test_windows_match_the_reference_on_chosen_grids(grid, method):
    assert make_windows(grid, (4, 3, 3), method) == _as_extents(reference_windows(*grid, shifted=method == SHIFTED))


@settings(max_examples=150, deadline=None)
@given(t=st.integers(1, 64), h=st.integers(1, 200), w=st.integers(1, 200), method=st.sampled_from(WINDOW_METHODS))
def test_windows_match_the_reference_and_tile_the_grid(t, h, w, method):
    """Same windows as the reference, in the same order, and every token in exactly one window."""
    windows = make_windows((t, h, w), (4, 3, 3), method)
    assert windows == _as_extents(reference_windows(t, h, w, shifted=method == SHIFTED))
    covered = torch.zeros(t, h, w, dtype=torch.int32)
    for (t0, t1), (h0, h1), (w0, w1) in windows:
        assert t0 < t1 and h0 < h1 and w0 < w1
        covered[t0:t1, h0:h1, w0:w1] += 1
    assert bool((covered == 1).all())


def test_dit_matches_the_reference_past_the_time_cap_and_on_a_tall_grid():
    """A whole model run where the window shapes are ones the fixtures lack: 31 latent frames (the time
    window is capped at 30 / 4 -> 8 frames, so 4 regular and 5 shifted windows along t), a tall
    one-frame grid, and a grid whose windows are a single token wide."""
    cfg = tiny_config("v2", 2, 2, 16, 32, mm_layers=1, rope_dim=16, txt_in_dim=40)
    vid_shape = torch.tensor([[31, 4, 6], [1, 40, 6], [2, 2, 2]])
    txt_shape = torch.tensor([[3], [2], [4]])
    assert_matches_reference("v2", cfg, 11, vid_shape, txt_shape, [1000.0, 700.0, 1000.0])
