"""Reference mode: the official one-step restoration of one clip, step by step (spec §7).

Used to check our models and pipeline against the official code's tensors (tests/fixtures/
e2e_3b_tiny): the whole clip in one VAE/DiT pass, noises injected, centre crop to the 16-pixel grid.
The user-facing pipeline (restore.py) differs where the official scripts lose data (cropped edges)
or memory (no temporal windows); see docs/pipeline.md.
"""

from collections.abc import Mapping

import torch

from . import geometry, sampling
from .temporal import pad_to_4n1

COND_NOISE_SCALE = 0.0
"""Hard-coded in the official SeedVR2 scripts: the LQ latent is not noised."""


def preprocess_reference(lq_frames: torch.Tensor, res_h: int, res_w: int) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` -> ``[3, T, H', W']`` in [-1, 1]: area resize, clamp, crop to /16."""
    frames = geometry.to_unit_float(lq_frames)
    frames = geometry.resize(frames, geometry.area_size(*frames.shape[-2:], res_h, res_w))
    frames = geometry.center_crop_to_grid(frames)
    return geometry.to_model_range(frames).permute(1, 0, 2, 3)


def encode_condition(vae, video: torch.Tensor, noise: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """``[3, T, H, W]`` (T already 4n+1 or 1) -> scaled channels-last latent ``[T', h, w, 16]``."""
    latent = vae.encode(video.unsqueeze(0), noise=noise)
    return sampling.to_dit_latent(latent, scaling_factor)


@torch.no_grad()
def restore_reference(
    lq_frames: torch.Tensor,
    dit,
    vae,
    text_emb: torch.Tensor,
    res_h: int,
    res_w: int,
    noises: Mapping[str, torch.Tensor],
    scaling_factor: float = 0.9152,
) -> torch.Tensor:
    """Official one-step restoration of ``lq_frames`` (uint8 ``[T, 3, H, W]``).

    ``noises``: ``vae`` ``[1, 16, T', h, w]`` (posterior sample), ``dit`` ``[T', h, w, 16]`` (x_T) and
    ``cond_aug`` ``[T', h, w, 16]`` (conditioning augmentation, weighted 0 as in the official
    scripts). Returns the decoded frames ``[T, 3, H', W']`` before clamping.
    """
    video = preprocess_reference(lq_frames, res_h, res_w)
    num_frames = video.shape[1]
    cond_latent = encode_condition(vae, pad_to_4n1(video, dim=1), noises["vae"], scaling_factor)
    cond_latent = sampling.lerp(cond_latent, noises["cond_aug"], COND_NOISE_SCALE * sampling.T_MAX)
    x_0 = sampling.sample(dit, noises["dit"], sampling.condition(cond_latent), text_emb)
    frames = vae.decode(sampling.from_dit_latent(x_0, scaling_factor, cond_latent.dtype))
    return frames[0].permute(1, 0, 2, 3)[:num_frames]
