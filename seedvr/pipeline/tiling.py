"""VAE encode/decode, optionally in overlapping spatial tiles so peak memory follows the tile size.

A tile is ``tile`` pixels square (the last row/column of tiles is aligned to the frame's far edge);
neighbouring tiles share at least ``overlap`` pixels. Results are blended with weights that ramp
linearly across each shared border and are normalised by their sum, so the seam is spread over the
overlap. Encoding tiles slice one full-frame posterior noise tensor, so every latent position gets
the same noise whatever the tiling. Tiling is an approximation (each tile's mid-block attention
sees only its tile); a tile as large as the frame is the untiled computation.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .geometry import GRID

SPATIAL_FACTOR = 8

Box = tuple[int, int, int, int]  # top, bottom, left, right in pixels
TileMap = Callable[[Callable[[Box], torch.Tensor], Sequence[Box]], list[torch.Tensor]]


def in_order(fn: Callable[[Box], torch.Tensor], boxes: Sequence[Box]) -> list[torch.Tensor]:
    """The default tile map: every tile here, one after the other (a sequence-parallel group deals
    them to its ranks instead, see seedvr.parallel)."""
    return [fn(box) for box in boxes]


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap in output pixels; both multiples of 16 so tiles sit on the latent grid."""

    tile: int
    overlap: int

    @classmethod
    def for_tile(cls, tile: int) -> "Tiling":
        """A tile with a quarter of it shared with each neighbour (at least 16 pixels)."""
        if tile < 4 * GRID or tile % GRID:
            raise ValueError(f"vae_tile must be a multiple of {GRID} and at least {4 * GRID} pixels, got {tile}")
        return cls(tile, max(GRID, tile // 4 // GRID * GRID))


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of tiles covering ``[0, size)``; the last one ends exactly at ``size``."""
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in starts]


def _ramp(size: int, span: tuple[int, int], ramp: int, device: torch.device) -> torch.Tensor:
    """Weights along one axis for one tile: linear ramps at borders shared with a neighbour."""
    start, stop = span
    pos = torch.arange(start, stop, device=device, dtype=torch.float32) + 0.5
    weight = torch.ones_like(pos)
    if start > 0:
        weight = torch.minimum(weight, (pos - start) / ramp)
    if stop < size:
        weight = torch.minimum(weight, (stop - pos) / ramp)
    return weight


def _blend_tiles(
    fn: Callable[[int, int, int, int], torch.Tensor],
    pixel_size: tuple[int, int],
    tiling: Tiling,
    out_div: int,
    map_tiles: TileMap = in_order,
) -> torch.Tensor:
    """Run ``fn(top, bottom, left, right)`` (pixels) on every tile and blend the results.

    Results are in units of ``out_div`` pixels (8 for latents, 1 for frames).
    """
    height, width = pixel_size
    boxes = [
        (top, bottom, left, right)
        for top, bottom in tile_spans(height, tiling.tile, tiling.overlap)
        for left, right in tile_spans(width, tiling.tile, tiling.overlap)
    ]
    parts = map_tiles(lambda box: fn(*box).float(), boxes)
    shape = (*parts[0].shape[:-2], height // out_div, width // out_div)
    out = torch.zeros(shape, device=parts[0].device)
    weights = torch.zeros(shape[-2:], device=parts[0].device)
    ramp = tiling.overlap // out_div
    for (top, bottom, left, right), part in zip(boxes, parts):
        rows, cols = (top // out_div, bottom // out_div), (left // out_div, right // out_div)
        w = _ramp(shape[-2], rows, ramp, part.device)[:, None] * _ramp(shape[-1], cols, ramp, part.device)
        out[..., rows[0] : rows[1], cols[0] : cols[1]] += part * w
        weights[rows[0] : rows[1], cols[0] : cols[1]] += w
    return out / weights


def vae_encode(
    vae, x: torch.Tensor, noise: torch.Tensor, tiling: Tiling | None = None, map_tiles: TileMap = in_order
) -> torch.Tensor:
    """Sampled posterior ``[1, 16, T', H/8, W/8]`` of ``x [1, 3, T, H, W]`` with the given ``noise``."""
    if tiling is None or max(x.shape[-2:]) <= tiling.tile:
        return vae.encode(x, noise=noise)
    f = SPATIAL_FACTOR

    def encode_tile(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        tile_noise = noise[..., top // f : bottom // f, left // f : right // f]
        return vae.encode(x[..., top:bottom, left:right], noise=tile_noise)

    return _blend_tiles(encode_tile, tuple(x.shape[-2:]), tiling, f, map_tiles).to(x.dtype)


def vae_decode(vae, z: torch.Tensor, tiling: Tiling | None = None, map_tiles: TileMap = in_order) -> torch.Tensor:
    """Frames ``[1, 3, T, 8h, 8w]`` of a latent ``z [1, 16, T', h, w]``."""
    f = SPATIAL_FACTOR
    if tiling is None or max(z.shape[-2:]) * f <= tiling.tile:
        return vae.decode(z)

    def decode_tile(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        return vae.decode(z[..., top // f : bottom // f, left // f : right // f])

    return _blend_tiles(decode_tile, (z.shape[-2] * f, z.shape[-1] * f), tiling, 1, map_tiles)
