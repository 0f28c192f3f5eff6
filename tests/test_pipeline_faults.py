"""A transient CUDA failure costs one more try of its window, with the same frames; other failures do not."""

import numpy as np
import pytest
import torch.distributed as dist

from mediagen import pattern
from seedvr.pipeline import RestoreOptions, make_plan, restore_frames, sampling
from seedvr.pipeline.restore import Stages
from tiny import tiny_models

OPTIONS = RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=1, seed=3)
CLIP = np.stack([pattern(i, 32, 16) for i in range(9)])  # two windows


@pytest.fixture(scope="module")
def models():
    return tiny_models("3b")


@pytest.fixture(scope="module")
def clean(models):
    return restore(models)


def restore(models) -> np.ndarray:
    plan = make_plan(16, 32, len(CLIP), models, OPTIONS)
    stages = Stages("cpu", plan.windows, len(CLIP))
    return np.concatenate(list(restore_frames([CLIP], models, OPTIONS, plan, stages)))


def failing_sampler(monkeypatch, error: Exception, times: int) -> list[int]:
    """`sampling.sample` fails its first `times` calls in the second window with `error`."""
    calls, sample = [], sampling.sample

    def flaky(*args, **kwargs):
        calls.append(1)
        if 2 <= len(calls) < 2 + times:
            raise error
        return sample(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", flaky)
    return calls


def test_a_transient_cuda_error_retries_its_window_once(models, clean, monkeypatch):
    calls = failing_sampler(monkeypatch, RuntimeError("CUDA error: unspecified launch failure"), times=1)
    np.testing.assert_array_equal(restore(models), clean)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA error: unspecified launch failure"),  # twice in a row: it is not transient
        RuntimeError("CUDA error: out of memory"),  # an allocation outside the caching allocator
        ValueError("bad input"),
    ],
)
def test_other_failures_are_not_retried(models, monkeypatch, error):
    calls = failing_sampler(monkeypatch, error, times=2)
    with pytest.raises(type(error)) as caught:
        restore(models)
    assert caught.value is error and len(calls) == (3 if "launch" in str(error) else 2)


def test_no_retry_inside_a_rank_group(models, monkeypatch):
    """One rank cannot redo a window while the others are in their next collective."""
    calls = failing_sampler(monkeypatch, RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"), times=1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUBLAS_STATUS"):
        restore(models)
    assert len(calls) == 2
