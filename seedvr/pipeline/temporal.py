"""Time axis: 4n+1 frame counts, temporal windows with overlap, and the crossfade that joins them.

The causal VAE needs ``4n + 1`` frames (or a single image). A long video is cut into windows of
``window`` frames (a 4n+1 number); consecutive windows share ``overlap`` frames. Each window is
restored on its own and the shared frames are crossfaded linearly from the earlier window to the
later one, so the switch happens gradually instead of at one frame. Inputs arrive as a stream of
chunks and outputs leave as soon as no later window can change them: memory holds about one window.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch


def is_4n1(n: int) -> bool:
    return n >= 1 and (n - 1) % 4 == 0


def padded_length(n: int) -> int:
    """Frames after the official padding: 1 stays 1, 2..4 become 5, otherwise up to 4n+1."""
    if n == 1:
        return 1
    return max(5, n + (-(n - 1)) % 4)


def pad_to_4n1(frames: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Repeat the last frame along ``dim`` until the count is ``padded_length`` (official ``cut_videos``)."""
    n = frames.shape[dim]
    extra = padded_length(n) - n
    if extra == 0:
        return frames
    last = frames.narrow(dim, n - 1, 1)
    return torch.cat([frames, last.expand(*[extra if d == dim else -1 for d in range(frames.ndim)])], dim=dim)


def floor_4n1(n: int) -> int:
    """Largest 4n+1 number <= n (at least 1)."""
    return max(1, n - (n - 1) % 4)


def default_overlap(window: int) -> int:
    """Frames shared by neighbours when the caller does not say.

    5 for windows of 9 frames or more, so that the stride (``window - 5``) is a multiple of 4 and
    every window sees the frames in the same phase of the VAE's 4-frame groups; 1 for 5-frame windows.
    """
    if window <= 1:
        return 0
    return 1 if window <= 5 else 5


def plan_windows(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every window over ``total`` frames, as :func:`iter_windows` yields them."""
    check_window(window, overlap)
    spans, start = [], 0
    while True:
        stop = min(start + window, total)
        spans.append((start, stop))
        if start + window >= total:
            return spans
        start += window - overlap


def check_window(window: int, overlap: int) -> None:
    if not is_4n1(window):
        raise ValueError(f"batch_frames must be a 4n+1 number (1, 5, 9, 13, ...), got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap_frames must be between 0 and batch_frames - 1 = {window - 1}, got {overlap}")


def iter_windows(chunks: Iterable[np.ndarray], window: int, overlap: int) -> Iterator[tuple[int, np.ndarray]]:
    """Regroup a stream of frame chunks ``[n, ...]`` into ``(start, frames)`` windows.

    Windows hold ``window`` frames except the last, which holds what is left (it is padded to 4n+1
    later); each starts ``window - overlap`` frames after the previous one. Only about one window of
    frames is buffered.
    """
    check_window(window, overlap)
    buffer: np.ndarray | None = None
    start, covered = 0, 0  # covered: frames already inside a yielded window
    for chunk in chunks:
        buffer = chunk if buffer is None else np.concatenate([buffer, chunk])
        while len(buffer) >= window:
            yield start, buffer[:window]
            covered = start + window
            buffer = buffer[window - overlap :]
            start += window - overlap
    if buffer is not None and start + len(buffer) > covered:
        yield start, buffer


@dataclass
class Crossfade:
    """Joins overlapping window outputs into one stream of frames.

    :meth:`push` takes a window's frames (float ``[n, ...]``) starting at frame ``start`` and returns
    the frames that are final; the last ``overlap`` frames are held back to be blended with the next
    window. :meth:`finish` returns what is still held. In a shared stretch of ``k`` frames the later
    window's weight rises linearly, ``(j + 1) / (k + 1)`` for the j-th shared frame.
    """

    overlap: int
    next_frame: int = 0
    held: torch.Tensor | None = field(default=None, repr=False)

    def push(self, start: int, frames: torch.Tensor) -> torch.Tensor:
        held = 0 if self.held is None else len(self.held)
        if start != self.next_frame - held or len(frames) < held:
            raise ValueError(
                f"window of {len(frames)} frames at {start} does not cover the {held} held frames at "
                f"{self.next_frame - held}"
            )
        if held:
            weight = torch.arange(1, held + 1, dtype=frames.dtype, device=frames.device) / (held + 1)
            weight = weight.view(-1, *([1] * (frames.ndim - 1)))
            blended = self.held * (1 - weight) + frames[:held] * weight
            frames = torch.cat([blended, frames[held:]])
        keep = min(self.overlap, len(frames))
        ready, self.held = frames[: len(frames) - keep], frames[len(frames) - keep :]
        self.next_frame = start + len(frames)
        return ready

    def finish(self) -> torch.Tensor | None:
        held, self.held = self.held, None
        return held
