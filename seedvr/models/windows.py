"""Window partition of the NaDiT's video tokens and the packed layout of one attention call.

SeedVR2 attends inside 3-D windows whose spatial size is set by the frame's area relative to a 720p token
grid (45x80), so any resolution gets about 3x3 windows per 720p of area. Even blocks use regular windows,
odd blocks the same windows shifted by half a window. Each window is one attention sequence holding the
window's video tokens followed by all text tokens of its sample; a text token's outputs are then averaged
over the windows of its sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WINDOW_METHODS = ("720pwin_by_size_bysize", "720pswin_by_size_bysize")

Extent = tuple[int, int]  # [start, stop) along one axis
Window = tuple[Extent, Extent, Extent]  # (t, h, w)


def window_sizes(t: int, h: int, w: int, window: tuple[int, int, int]) -> tuple[int, int, int]:
    """Window size in tokens: the spatial size follows the grid rescaled to 720p area (45x80 tokens)."""
    nt, nh, nw = window
    scale = math.sqrt(45 * 80 / (h * w))
    wh = math.ceil(round(h * scale) / nh)
    ww = math.ceil(round(w * scale) / nw)
    wt = math.ceil(min(t, 30) / nt)
    return wt, wh, ww


def _regular_extents(length: int, size: int) -> list[Extent]:
    return [(i * size, min((i + 1) * size, length)) for i in range(math.ceil(length / size))]


def _shifted_extents(length: int, size: int) -> list[Extent]:
    """Windows moved by half a window; an axis that a single window covers is not shifted."""
    if size >= length:
        return [(0, length)]
    count = math.ceil((length - 0.5) / size) + 1
    extents = [(max(int((i - 0.5) * size), 0), min(int((i + 0.5) * size), length)) for i in range(count)]
    return [(a, b) for a, b in extents if b > a]


def make_windows(
    grid: tuple[int, int, int], window: tuple[int, int, int], method: str
) -> list[Window]:
    """The windows of one sample's token grid, in the official order: w outermost, then h, then t."""
    if method not in WINDOW_METHODS:
        raise ValueError(f"window_method must be one of {WINDOW_METHODS}, got {method!r}")
    t, h, w = grid
    sizes = window_sizes(t, h, w, window)
    extents = _shifted_extents if method == "720pswin_by_size_bysize" else _regular_extents
    et, eh, ew = (extents(n, s) for n, s in zip(grid, sizes))
    return [(xt, xh, xw) for xw in ew for xh in eh for xt in et]


@dataclass
class WindowLayout:
    """Everything one window kind needs for a forward pass, computed once and shared by its blocks.

    `order` lists the packed video rows in window order; `local` holds each of those tokens'
    window-local (t, h, w) coordinates and `extent` the (t, h, w) size of its window (rotary
    embeddings need both). `seq_lens` are the attention sequence lengths (window + its sample's text);
    `gather` picks the rows of cat([windowed video, text]) that build the packed sequences.
    """

    order: torch.Tensor  # [Lv] int64
    local: torch.Tensor  # [Lv, 3] int64
    extent: torch.Tensor  # [Lv, 3] int64
    window_count: list[int]  # windows per sample
    seq_lens: list[int]
    gather: torch.Tensor  # [sum(seq_lens)] int64
    vid_rows: torch.Tensor  # [Lv] position of each windowed video token in the packed sequences
    txt_rows: torch.Tensor  # [sum(window_count_b * L_b)] positions of text outputs in the packed sequence
    txt_source: torch.Tensor  # [Lt] text row whose rotated q/k each text row uses (v2 only, see below)
    txt_pos: torch.Tensor  # [Lt] rotary position of that row
    inverse: torch.Tensor  # [Lv] the permutation undoing `order` (computed once, used by every block)

    def video_sizes(self, txt_lens: list[int]) -> torch.Tensor:
        """Video tokens per window, in layout order."""
        window_txt = torch.tensor(txt_lens).repeat_interleave(torch.tensor(self.window_count))
        return torch.tensor(self.seq_lens) - window_txt

    def part(self, a: int, b: int, txt_lens: list[int]) -> WindowLayout:
        """The layout of windows [a, b) alone, re-indexed to start at 0 (a sequence-parallel rank's share).

        Windows are emitted contiguously (video rows in window order, packed sequences in window order),
        so the part is a slice of every index map; its `order` is the identity over its own rows.
        """
        window_sample = torch.repeat_interleave(torch.arange(len(txt_lens)), torch.tensor(self.window_count))
        vid_start, seq_start, txt_start = (
            run_starts(lengths)
            for lengths in (self.video_sizes(txt_lens), torch.tensor(self.seq_lens), torch.tensor(txt_lens)[window_sample])
        )
        v0, n, p0, total_vid = vid_start[a], vid_start[b] - vid_start[a], seq_start[a], self.order.numel()
        gather = self.gather[p0 : seq_start[b]]
        local_order = torch.arange(n, device=self.order.device)
        return WindowLayout(
            order=local_order,
            local=self.local[v0 : v0 + n],
            extent=self.extent[v0 : v0 + n],
            window_count=torch.bincount(window_sample[a:b], minlength=len(txt_lens)).tolist(),
            seq_lens=self.seq_lens[a:b],
            gather=torch.where(gather < total_vid, gather - v0, gather - total_vid + n),
            vid_rows=self.vid_rows[v0 : v0 + n] - p0,
            txt_rows=self.txt_rows[txt_start[a] : txt_start[b]] - p0,
            txt_source=self.txt_source,
            txt_pos=self.txt_pos,
            inverse=local_order,
        )


def run_starts(lengths: torch.Tensor) -> list[int]:
    """Start offsets of consecutive runs of `lengths`, plus the end."""
    return F.pad(torch.cumsum(lengths, 0), (1, 0)).tolist()


def build_layout(
    vid_grids: list[tuple[int, int, int]],
    txt_lens: list[int],
    window: tuple[int, int, int],
    method: str,
    device: torch.device,
) -> WindowLayout:
    """Windows of every sample of a packed batch and the index maps of the packed attention call."""
    order, local, extent, counts, seq_lens, gather, vid_rows, txt_rows = [], [], [], [], [], [], [], []
    vid_offset, txt_offset, packed = 0, 0, 0
    total_vid = sum(t * h * w for t, h, w in vid_grids)
    windowed = 0  # rows of video emitted so far in window order
    for (t, h, w), txt_len in zip(vid_grids, txt_lens):
        grid_idx = torch.arange(t * h * w).view(t, h, w) + vid_offset
        windows = make_windows((t, h, w), window, method)
        counts.append(len(windows))
        txt_idx = torch.arange(txt_len) + total_vid + txt_offset
        for (t0, t1), (h0, h1), (w0, w1) in windows:
            n = (t1 - t0) * (h1 - h0) * (w1 - w0)
            order.append(grid_idx[t0:t1, h0:h1, w0:w1].reshape(-1))
            coords = torch.stack(
                torch.meshgrid(
                    torch.arange(t1 - t0), torch.arange(h1 - h0), torch.arange(w1 - w0), indexing="ij"
                ),
                dim=-1,
            ).reshape(-1, 3)
            local.append(coords)
            extent.append(torch.tensor([t1 - t0, h1 - h0, w1 - w0]).expand(n, 3))
            gather.append(torch.arange(windowed, windowed + n))
            gather.append(txt_idx)
            vid_rows.append(torch.arange(packed, packed + n))
            txt_rows.append(torch.arange(packed + n, packed + n + txt_len))
            seq_lens.append(n + txt_len)
            windowed += n
            packed += n + txt_len
        vid_offset += t * h * w
        txt_offset += txt_len
    txt_source, txt_pos = _repeated_text_rows(txt_lens, counts)
    order = torch.cat(order)
    return WindowLayout(
        order=order.to(device),
        local=torch.cat(local).to(device),
        extent=torch.cat(extent).to(device),
        window_count=counts,
        seq_lens=seq_lens,
        gather=torch.cat(gather).to(device),
        vid_rows=torch.cat(vid_rows).to(device),
        txt_rows=torch.cat(txt_rows).to(device),
        txt_source=txt_source.to(device),
        txt_pos=txt_pos.to(device),
        inverse=torch.argsort(order).to(device),
    )


def _repeated_text_rows(txt_lens: list[int], window_count: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rotated text row the official v2 attention really feeds each text position.

    The official 3B code rotates one copy of each sample's text per window, concatenates the copies,
    then packs the sequences with an index built for the *unrepeated* text, so it reads only the first
    `sum(L)` rows of the repeated copies. With one sample (the pipeline's case) that is the text itself;
    in a packed batch, later samples' text q/k come from earlier samples' copies. The checkpoints were
    trained with that code, so we reproduce it.
    """
    starts = torch.tensor([0] + txt_lens[:-1]).cumsum(0).tolist()
    source = [torch.arange(s, s + n) for s, n, c in zip(starts, txt_lens, window_count) for _ in range(c)]
    pos = [torch.arange(n) for n, c in zip(txt_lens, window_count) for _ in range(c)]
    total = sum(txt_lens)
    return torch.cat(source)[:total], torch.cat(pos)[:total]
