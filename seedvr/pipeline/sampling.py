"""Diffusion sampling for SeedVR2 (spec §6): lerp schedule, v-prediction, Euler, optional CFG.

Latents here are channels last ``[T', h, w, C]`` as the DiT sees them. With the defaults (one step at
t = 1000, cfg 1) sampling is a single DiT call and ``x0 = x_T - v``.
"""

from collections.abc import Callable

import torch

T_MAX = 1000.0


def sampling_timesteps(steps: int) -> torch.Tensor:
    """``uniform_trailing`` timesteps (shift 1): steps = 1 -> [1000.], steps = 2 -> [1000., 500.]."""
    if steps < 1:
        raise ValueError(f"sample_steps must be >= 1, got {steps}")
    return torch.arange(1.0, 0.0, -1.0 / steps)[:steps] * T_MAX


def lerp(x_0: torch.Tensor, x_T: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Schedule ``x_t = (1 - t/T) x_0 + (t/T) x_T``."""
    return (1 - t / T_MAX) * x_0 + (t / T_MAX) * x_T


def endpoints_from_v(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_0, x_T)`` predicted from a v_lerp output at timestep ``t`` (fp32 ``[1]`` tensor).

    The fp32 timestep promotes bf16 inputs to fp32, as in the official run.
    """
    a, b = 1 - t / T_MAX, t / T_MAX
    return (x_t - b * v) / (a + b), (x_t + a * v) / (a + b)


def condition(cond_latent: torch.Tensor) -> torch.Tensor:
    """``[T', h, w, 16]`` LQ latent -> ``[T', h, w, 17]`` condition: the latent and a 1.0 mask channel."""
    return torch.cat([cond_latent, torch.ones_like(cond_latent[..., :1])], dim=-1)


def to_dit_latent(latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """VAE sample ``[1, 16, T', h, w]`` -> scaled, channels-last ``[T', h, w, 16]``."""
    return (latent[0] * scaling_factor).permute(1, 2, 3, 0)


def from_dit_latent(x_0: torch.Tensor, scaling_factor: float, dtype: torch.dtype) -> torch.Tensor:
    """DiT latent ``[T', h, w, 16]`` -> VAE input ``[1, 16, T', h, w]`` in ``dtype`` (cast, then unscale)."""
    return (x_0.to(dtype) / scaling_factor).permute(3, 0, 1, 2).unsqueeze(0)


def dit_velocity(
    dit: Callable[..., torch.Tensor], x_t: torch.Tensor, cond: torch.Tensor, text: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """One DiT call on one video: packs ``[x_t, cond]`` into ``[T'hw, 33]`` tokens, returns ``v [T', h, w, 16]``."""
    grid = x_t.shape[:3]
    vid = torch.cat([x_t, cond.to(x_t.dtype)], dim=-1).reshape(-1, x_t.shape[-1] + cond.shape[-1])
    vid_shape = torch.tensor([list(grid)], dtype=torch.int64, device=x_t.device)
    txt_shape = torch.tensor([[text.shape[0]]], dtype=torch.int64, device=x_t.device)
    v = dit(vid, text, vid_shape, txt_shape, t)
    return v.reshape(*grid, v.shape[-1])


def classifier_free_guidance(pos: torch.Tensor, neg: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """``neg + scale (pos - neg)``, optionally rescaled towards the per-token std of ``pos``."""
    cfg = neg + scale * (pos - neg)
    if rescale != 0.0:
        factor = pos.std(dim=-1, keepdim=True) / cfg.std(dim=-1, keepdim=True)
        cfg = cfg * (rescale * factor + (1 - rescale))
    return cfg


def sample(
    dit: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    cond: torch.Tensor,
    text_pos: torch.Tensor,
    text_neg: torch.Tensor | None = None,
    steps: int = 1,
    cfg_scale: float = 1.0,
    cfg_rescale: float = 0.0,
) -> torch.Tensor:
    """Euler sampling from ``noise`` (x_T) to x_0, fp32 result. One DiT call per step (two with CFG).

    Between steps ``x_t`` stays float32, as in the official code; the DiT rounds its input itself.
    """
    if cfg_scale != 1.0 and text_neg is None:
        raise ValueError("cfg_scale != 1 needs the negative text embedding (neg_emb.pt)")
    timesteps = sampling_timesteps(steps).to(noise.device)
    x_t = noise
    for i, t in enumerate(timesteps):
        t = t.reshape(1)
        v = dit_velocity(dit, x_t, cond, text_pos, t)
        if cfg_scale != 1.0:
            neg = dit_velocity(dit, x_t, cond, text_neg, t)
            v = classifier_free_guidance(v, neg, cfg_scale, cfg_rescale)
        x_0, x_T = endpoints_from_v(v, x_t, t)
        if i + 1 < len(timesteps):
            x_t = lerp(x_0, x_T, timesteps[i + 1])
    return x_0
