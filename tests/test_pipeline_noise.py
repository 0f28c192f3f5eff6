"""Noise keyed by (seed, purpose, first frame): any window computed on its own equals that window of a
whole run, which is what sequence parallelism, fan-out and resume rely on."""

import numpy as np
import pytest
import torch

from seedvr.pipeline import RestoreOptions, make_plan, restore_frames
from seedvr.pipeline import restore
from seedvr.pipeline.noise import noise_seed, window_noise
from tiny import tiny_models


def test_noise_is_a_function_of_its_key_only():
    shape = (1, 16, 2, 3, 4)
    a = window_noise(7, "posterior", 12, shape)
    torch.manual_seed(123)
    torch.randn(100)  # other draws in the process change nothing
    assert torch.equal(a, window_noise(7, "posterior", 12, shape))
    others = [window_noise(8, "posterior", 12, shape), window_noise(7, "x_T", 12, shape), window_noise(7, "posterior", 13, shape)]
    for other in others:
        assert not torch.allclose(a, other)
    assert 0.7 < a.std().item() < 1.3


def test_noise_dtype_and_device_only_cast():
    a = window_noise(1, "x_T", 0, (4, 5), torch.bfloat16)
    assert a.dtype == torch.bfloat16 and torch.equal(a, window_noise(1, "x_T", 0, (4, 5)).to(torch.bfloat16))


def test_noise_key_is_checked():
    with pytest.raises(ValueError, match="purpose"):
        noise_seed(1, "cond", 0)
    with pytest.raises(ValueError, match="first_frame"):
        noise_seed(1, "x_T", -1)


def test_a_window_restored_alone_equals_that_window_of_a_whole_run(monkeypatch):
    """Restore 13 frames in windows of 5 (overlap 1, starts 0, 4, 8), recording each window's raw
    output; then restore the middle window's frames alone: identical."""
    models = tiny_models("3b")
    frames = np.random.default_rng(0).integers(0, 256, (13, 32, 48, 3), dtype=np.uint8)
    options = RestoreOptions(res_h=32, res_w=48, batch_frames=5, overlap_frames=1, color_fix="none")
    plan = make_plan(32, 48, len(frames), models, options)
    seen = {}
    real = restore.restore_window

    def recording(window_frames, models, options, plan, first_frame, stages):
        seen[first_frame] = out = real(window_frames, models, options, plan, first_frame, stages)
        return out

    monkeypatch.setattr(restore, "restore_window", recording)
    stages = restore.Stages("cpu", plan.windows, len(frames))
    list(restore_frames([frames[:7], frames[7:]], models, options, plan, stages))
    assert sorted(seen) == [0, 4, 8]
    alone = real(frames[4:9], models, options, plan, 4, restore.Stages("cpu", 1, 5))
    assert torch.equal(alone, seen[4])
    shifted = real(frames[4:9], models, options, plan, 0, restore.Stages("cpu", 1, 5))
    assert not torch.allclose(shifted, seen[4])
