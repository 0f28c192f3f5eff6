"""Time axis: 4n+1 frame counts, temporal windows with overlap, and the crossfade that joins them.

The causal VAE needs ``4n + 1`` frames (or a single image). A long video is cut into windows of
``window`` frames (a 4n+1 number); consecutive windows share ``overlap`` frames. Each window is
restored on its own and the shared frames are crossfaded linearly from the earlier window to the
later one, so the switch happens gradually instead of at one frame. Inputs arrive as a stream of
chunks and outputs leave as soon as no later window can change them: memory holds about one window.

Windows are planned per shot: hard cuts (found by a cheap frame-difference measure before planning)
split the video into shots, each cut into balanced windows of its own, so no window and no crossfade
crosses a cut. The plan depends only on the frame count, the cuts and the settings: any process that
restores some of the windows (a sequence-parallel rank, a fanned-out worker, a resumed run) agrees on it.
"""

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


CUT_THRESHOLD = 30.0  # mean absolute difference of consecutive 32x32 grayscale thumbnails, levels of 255
MIN_SHOT = 5  # frames: a shorter "shot" (a flash) is not cut off


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


def plan_windows(total: int, window: int, overlap: int, cuts: Sequence[int] = ()) -> list[tuple[int, int]]:
    """``(start, stop)`` of every window over ``total`` frames: each shot (cut at ``cuts``) on its own.

    No window spans a cut, so no crossfade crosses one. Within a shot see :func:`shot_windows`.
    """
    check_window(window, overlap)
    bounds = [0, *cuts, total]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cuts must be increasing frame numbers inside 1..{total - 1}, got {list(cuts)}")
    shots = zip(bounds, bounds[1:])
    return [(a + start, a + stop) for a, b in shots for start, stop in shot_windows(b - a, window, overlap)]


def shot_windows(total: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Balanced windows over one shot of ``total`` frames (docs/pipeline.md, "Temporal windows").

    The fewest windows of at most ``window`` frames that cover the shot, sharing ``overlap`` frames
    with each neighbour; the frames they must hold are shared out as evenly as 4n+1 lengths allow
    (lengths differ by at most 4, the shorter first), so every stride is ``1 - overlap`` modulo 4 and
    no long run ends in a short tail. The last window drops the 0-3 frames the rounding overshoots
    (they come back as 4n+1 padding). Windows of 5 with no overlap cannot avoid a 1-frame window with
    4n+1 lengths: there the lengths are equal within one frame instead (each padded to 5).
    """
    if total <= window:
        return [(0, total)]
    count = math.ceil((total - overlap) / (window - overlap))
    held = total + (count - 1) * overlap  # frames of all windows together
    groups, extra = divmod(math.ceil((held - count) / 4), count)
    if groups:
        lengths = [4 * (groups + (i >= count - extra)) + 1 for i in range(count)]
    else:
        lengths = [held // count + (i >= count - held % count) for i in range(count)]
    spans, start = [], 0
    for length in lengths:
        spans.append((start, min(start + length, total)))
        start += length - overlap
    return spans


def check_window(window: int, overlap: int) -> None:
    if not is_4n1(window):
        raise ValueError(f"batch_frames must be a 4n+1 number (1, 5, 9, 13, ...), got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap_frames must be between 0 and batch_frames - 1 = {window - 1}, got {overlap}")


def iter_windows(chunks: Iterable[np.ndarray], spans: Sequence[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """Regroup a stream of frame chunks ``[n, ...]`` into the windows ``spans`` (from :func:`plan_windows`).

    Yields ``(start, frames)`` per window, in order; only about one window of frames is buffered. A
    stream shorter or longer than the plan is an error (the plan was made for a known frame count).
    """
    buffer, offset = None, 0  # offset: the frame number of buffer[0]
    chunks = iter(chunks)
    for start, stop in spans:
        while buffer is None or offset + len(buffer) < stop:
            chunk = next(chunks, None)
            if chunk is None:
                got = offset + (0 if buffer is None else len(buffer))
                raise ValueError(f"the video has {got} frames, but its plan expects {spans[-1][1]}")
            buffer = chunk if buffer is None else np.concatenate([buffer, chunk])
        buffer, offset = buffer[start - offset :], start
        yield start, buffer[: stop - start]
    rest = sum(len(chunk) for chunk in chunks) + (0 if buffer is None else offset + len(buffer) - spans[-1][1])
    if rest:
        raise ValueError(f"the video has {spans[-1][1] + rest} frames, but its plan expects {spans[-1][1]}")


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


def join_windows(outputs: Iterable[tuple[int, torch.Tensor]], overlap: int) -> Iterator[torch.Tensor]:
    """Crossfade window outputs ``(start, frames)`` given in order into a stream of final frames.

    A window that starts where the previous one ended (the first window of a shot) starts a new
    :class:`Crossfade`, so nothing is blended across a cut.
    """
    fade = Crossfade(overlap)
    for start, frames in outputs:
        if start >= fade.next_frame:
            yield from _flush(fade)
            fade = Crossfade(overlap, next_frame=start)
        ready = fade.push(start, frames)
        if len(ready):
            yield ready
    yield from _flush(fade)


def _flush(fade: Crossfade) -> Iterator[torch.Tensor]:
    held = fade.finish()
    if held is not None and len(held):
        yield held


def detect_cuts(
    thumbnails: Iterable[np.ndarray], threshold: float = CUT_THRESHOLD, min_shot: int = MIN_SHOT
) -> tuple[list[int], int]:
    """Hard cuts of a video from its small grayscale frames; returns ``(cuts, frame count)``.

    A cut is a frame whose mean absolute difference from the previous frame exceeds ``threshold``
    (levels of 255). A cut closer than ``min_shot`` frames to the previous cut or to either end of the
    video is ignored (a flash is no shot). Holds two thumbnails at a time.
    """
    cuts, previous, count = [], None, 0
    for thumb in thumbnails:
        thumb = thumb.astype(np.int16)
        if previous is not None and np.abs(thumb - previous).mean() > threshold:
            if count - (cuts[-1] if cuts else 0) >= min_shot:
                cuts.append(count)
        previous, count = thumb, count + 1
    if cuts and count - cuts[-1] < min_shot:
        cuts.pop()
    return cuts, count
