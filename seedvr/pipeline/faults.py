"""One more try for a window after a transient CUDA failure.

A kernel launch failure, a cuBLAS/cuDNN execution error or an ECC hiccup can pass; the window is then
computed again, and since its noise is keyed by (seed, first frame) the retry gives the same frames.
Out of memory is no transient failure (the same window needs the same memory), nor is bad input
(any other exception). Inside a sequence-parallel group there is no retry: the other ranks are already
in their next collective, so one rank cannot redo a window alone; the group fails the job instead.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

# What PyTorch's CUDA, cuBLAS and cuDNN failures say (torch.AcceleratorError or RuntimeError).
CUDA_FAILURE_MARKERS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error")


def is_transient_cuda_error(exc: BaseException) -> bool:
    """A CUDA runtime failure that is not an out-of-memory."""
    text = str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text:
        return False
    return isinstance(exc, RuntimeError) and any(marker in text for marker in CUDA_FAILURE_MARKERS)


def retry_transient(fn: Callable[..., Result]) -> Callable[..., Result]:
    """`fn`, called once more when its first call fails with a transient CUDA error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Result:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            if not is_transient_cuda_error(exc) or (dist.is_available() and dist.is_initialized()):
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            logger.warning("%s: transient CUDA error (%s); trying it once more", fn.__name__, first_line)
        gc.collect()  # out of the except block: the failed try's tensors, held by its traceback, are gone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return fn(*args, **kwargs)

    return wrapper
