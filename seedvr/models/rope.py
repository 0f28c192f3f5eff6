"""Rotary position embeddings of the NaDiT, computed from positions once per window layout.

Both models rotate interleaved channel pairs (2j, 2j+1) of the leading channels of each head, in
float32, with three axial groups (t, h, w) of frequencies:
- v2 (3B, "mmrope3d"): "lang" frequencies, integer positions local to the window, video token
  (t, h, w) at (L + t, h, w) where L is its sample's text length, text token p at (p, p, p).
- v1 (7B): "pixel" frequencies, positions linspace(-1, 1, n) across each window axis of extent n;
  text is not rotated.
"""

from __future__ import annotations

import math

import torch


def lang_frequencies(rope_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Per-axis frequencies of the 3B model (`rope_dim // 3` channels per axis)."""
    dim = rope_dim // 3
    return 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)


def pixel_frequencies(head_dim: int, max_freq: float = 256.0) -> torch.Tensor:
    """Per-axis frequencies of the 7B model (`(head_dim // 2) // 3` channels per axis)."""
    dim = (head_dim // 2) // 3
    return torch.linspace(1.0, max_freq / 2, dim // 2) * math.pi


def axial_angles(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Angles [L, 3F] of positions [L, 3] (t, h, w) for frequencies [F], axis groups concatenated."""
    return (positions.float()[:, :, None] * freqs.float()).flatten(1)


def window_linspace(local: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Coordinate i of a window axis of extent n mapped to linspace(-1, 1, n)[i], bit-exact."""
    out = torch.empty(local.shape, dtype=torch.float32, device=local.device)
    for n in extent.unique().tolist():
        mask = extent == n
        out[mask] = torch.linspace(-1.0, 1.0, n, device=local.device)[local[mask]]
    return out


def rotation_table(angles: torch.Tensor) -> torch.Tensor:
    """[L, 2, P] float32 cos and sin of angles [L, P]: computed once per layout, read by every block."""
    return torch.stack((angles.cos(), angles.sin()), dim=1)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2*P channels of x [L, H, D] by a `rotation_table` [L, 2, P], in float32; the rest pass through."""
    rot = 2 * table.shape[-1]
    x0, x1 = x[..., :rot].float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = table[:, None, 0], table[:, None, 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    return torch.cat([rotated.to(x.dtype), x[..., rot:]], dim=-1)
