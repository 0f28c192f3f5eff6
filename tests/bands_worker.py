"""One rank of tests/test_parallel_bands.py (started by torch.multiprocessing spawn, gloo over a file
store): runs the band-split VAE and whole windows on the fixture models and saves this rank's results
and work counts to OUT_DIR/bands{size}_rank{r}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from seedvr import bands, parallel  # noqa: E402
from seedvr.models.vae import build_vae  # noqa: E402
from seedvr.pipeline import RestoreOptions, make_plan  # noqa: E402
from seedvr.pipeline.restore import Stages  # noqa: E402
from tiny import tiny_models  # noqa: E402

# An odd VAE: 3 resolutions (spatial factor 4), one temporal step, 3 norm groups, uneven widths.
ODD_VAE = {
    "block_out_channels": [6, 9, 12],
    "norm_num_groups": 3,
    "temporal_scale_num": 1,
    "latent_channels": 4,
    "encode_chunk_frames": 2,
    "decode_chunk_latents": 2,
}
# (vae, frames, height, width): latent rows 7 (2 ranks 3+4, 3 ranks 2+2+3; 9 frames stream in 2 chunks),
# 2 (3 ranks: one band empty), and the odd VAE at 11 latent rows of 4 pixels and 5 latent columns.
VAE_CASES = {
    "fixture_7rows": ("fixture", 9, 56, 40),
    "fixture_2rows": ("fixture", 5, 16, 24),
    "odd_11rows": ("odd", 5, 44, 20),
}
# (input frames, height, width, options): resize up and down, grid padding on every side, both colour fixes
# that mix rows.
WINDOW_CASES = {
    "video_wavelet": (5, 37, 53, dict(res_h=64, res_w=90, color_fix="wavelet")),
    "image_adain": (1, 100, 60, dict(res_h=45, res_w=26, color_fix="adain")),
}


def vaes() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    odd = build_vae(ODD_VAE).eval().requires_grad_(False)
    return {"fixture": tiny_models().vae, "odd": odd}


def vae_inputs(vae: torch.nn.Module, frames: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The clip, the posterior noise and a latent to decode (random, fixed by the case's shape)."""
    p = vae.params
    gen = torch.Generator().manual_seed(frames * 1000 + height + width)
    latent = (1, p.latent_channels, (frames - 1) // p.temporal_factor + 1, height // p.spatial_factor, width // p.spatial_factor)
    video = torch.rand(1, 3, frames, height, width, generator=gen) * 2 - 1
    return video, torch.randn(latent, generator=gen), torch.randn(latent, generator=gen)


def window_frames(frames: int, height: int, width: int) -> np.ndarray:
    gen = np.random.default_rng(frames + height * width)
    return gen.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def run_vae_cases(ranks: parallel.Ranks) -> dict[str, torch.Tensor | dict]:
    out: dict = {}
    models = vaes()
    for name, (vae_name, *shape) in VAE_CASES.items():
        vae = models[vae_name]
        factor = vae.params.spatial_factor
        video, noise, latent = vae_inputs(vae, *shape)
        grid = bands.Bands.even(ranks, shape[1] // factor, shape[2] // factor)
        start, stop = grid.span(factor)
        parallel.WORK.clear()
        out[f"{name}/encode"] = bands.encode_band(vae, video[..., start:stop, :], noise, grid)
        out[f"{name}/decode"] = bands.decode_band(vae, latent, grid)
        out[f"{name}/work"] = dict(parallel.WORK)
    return out


def run_window_cases(ranks: parallel.Ranks) -> dict[str, torch.Tensor | dict]:
    out = {}
    models = tiny_models()
    for name, (frames, height, width, settings) in WINDOW_CASES.items():
        options = RestoreOptions(vae_tile=0, **settings)
        plan = make_plan(height, width, frames, models, options)
        stages = Stages(models.device, 1, frames)
        parallel.WORK.clear()
        out[name] = bands.restore_window_bands(window_frames(frames, height, width), models, options, plan, 0, stages, ranks)
        out[f"{name}/work"] = dict(parallel.WORK)
    return out


def main(rank: int, size: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    ranks = parallel.Ranks(group=dist.group.WORLD, rank=rank, size=size, device=torch.device("cpu"))
    try:
        torch.save(run_vae_cases(ranks) | run_window_cases(ranks), Path(out_dir) / f"bands{size}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()

