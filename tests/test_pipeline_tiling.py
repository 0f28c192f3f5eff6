"""Spatial VAE tiling: tile layout, exact blending for a local operator, closeness with the tiny VAE."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mediagen import pattern
from seedvr.pipeline.tiling import Tiling, tile_spans, vae_decode, vae_encode
from tiny import tiny_models


class LocalVAE:
    """A VAE-shaped operator whose every output position depends only on its own 8x8 block: tiling
    must reproduce it exactly, which checks the tile coordinates, the noise slices and the blend."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def encode(self, x, noise):
        self.calls.append(tuple(x.shape[-2:]))
        mean = F.avg_pool3d(x[:, :, ::4], kernel_size=(1, 8, 8))
        return mean.repeat(1, 6, 1, 1, 1)[:, :16] + 0.1 * noise

    def decode(self, z):
        self.calls.append(tuple(z.shape[-2:]))
        frames = F.interpolate(z[:, :3], scale_factor=(1, 8, 8), mode="nearest")
        return torch.cat([frames[:, :, :1], frames[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)


def _video(frames: int, height: int, width: int) -> torch.Tensor:
    clip = np.stack([pattern(i, width, height) for i in range(frames)])
    return torch.from_numpy(clip).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1


def test_tile_spans_cover_with_overlap():
    assert tile_spans(48, 64, 16) == [(0, 48)]
    assert tile_spans(160, 64, 16) == [(0, 64), (48, 112), (96, 160)]
    spans = tile_spans(208, 96, 32)
    assert spans[0][0] == 0 and spans[-1][1] == 208
    assert all(b[0] <= a[1] - 32 for a, b in zip(spans, spans[1:]))
    assert Tiling.for_tile(512) == Tiling(512, 128)
    with pytest.raises(ValueError, match="vae_tile"):
        Tiling.for_tile(100)


def test_tiling_is_exact_for_a_local_operator_and_bounds_the_tile():
    vae, x = LocalVAE(), _video(5, 80, 112)
    noise = torch.randn(1, 16, 2, 10, 14, generator=torch.Generator().manual_seed(0))
    tiling = Tiling(64, 16)
    z = vae_encode(vae, x, noise, None)
    torch.testing.assert_close(vae_encode(vae, x, noise, tiling), z, atol=1e-5, rtol=0)
    torch.testing.assert_close(vae_decode(vae, z, tiling), vae_decode(vae, z, None), atol=1e-5, rtol=0)
    tiled_calls = vae.calls[1:]
    assert len(tiled_calls) > 2
    assert max(max(h, w) for h, w in tiled_calls if h > 16) <= 64  # pixel tiles (latent tiles are /8)


def test_tiled_tiny_vae_is_close_to_untiled():
    """The real (tiny, random) VAE: each tile's attention and receptive field see only the tile, so the
    result is an approximation that improves with the tile size; a frame-sized tile is exact."""
    vae = tiny_models().vae
    x = _video(1, 64, 96)
    noise = torch.randn(1, 16, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    z = vae_encode(vae, x, noise, None)
    frames = vae_decode(vae, z, None)

    def rel_error(tile: int) -> tuple[float, float]:
        tiling = Tiling(tile, 16)
        enc = (vae_encode(vae, x, noise, tiling) - z).abs().mean() / z.abs().mean()
        dec = (vae_decode(vae, z, tiling) - frames).abs().mean() / frames.abs().mean()
        return enc.item(), dec.item()

    small, large = rel_error(48), rel_error(64)
    print(f"relative mean error (encode, decode): tile 48 {small}, tile 64 {large}")
    assert large[0] < small[0] and large[1] < small[1]
    # random weights, frames only 1.5 tiles wide; measured (0.302, 0.603) and (0.117, 0.435)
    assert small[0] < 0.33 and small[1] < 0.66
    assert large[0] < 0.13 and large[1] < 0.48
    torch.testing.assert_close(vae_encode(vae, x, noise, Tiling(96, 16)), z, atol=0, rtol=0)
