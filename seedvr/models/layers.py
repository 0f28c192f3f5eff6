"""Small building blocks of the NaDiT: time embedding, per-stream modules, modulation, MLPs, patching."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def timestep_sinusoid(timestep: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[sin | cos] embedding of float timesteps [B] -> [B, dim], in float32 (diffusers' convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    args = timestep.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear -> SiLU -> Linear, giving the 6*dim modulation vector."""

    def __init__(self, hidden_dim: int, output_dim: int, sinusoidal_dim: int = 256):
        super().__init__()
        self.sinusoidal_dim = sinusoidal_dim
        self.proj_in = nn.Linear(sinusoidal_dim, hidden_dim)
        self.proj_hid = nn.Linear(hidden_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        emb = timestep_sinusoid(timestep, self.sinusoidal_dim).to(self.proj_in.weight.dtype)
        emb = F.silu(self.proj_in(emb))
        emb = F.silu(self.proj_hid(emb))
        return self.proj_out(emb)


class Streams(nn.Module):
    """One module per stream (`vid`, `txt`) or one shared by both (`all`), named as in the checkpoints.

    `vid_only` leaves the text stream without a module: the 3B model's last block has no text MLP
    and no text modulation.
    """

    def __init__(self, make: Callable[[], nn.Module], shared: bool, vid_only: bool = False):
        super().__init__()
        self.shared = shared
        self.vid_only = vid_only
        if shared:
            self.all = make()
        else:
            self.vid = make()
            if not vid_only:
                self.txt = make()

    def get(self, stream: str) -> nn.Module | None:
        if stream == "txt" and self.vid_only:
            return None
        return self.all if self.shared else getattr(self, stream)


def fp32_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that stay (at least) float32 whatever the model's dtype."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if getattr(module, "keep_fp32", False)
        for name, _ in module.named_parameters(recurse=False)
    }


def kept_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a `keep_fp32` parameter in a model of `dtype`: float32, or float64 in a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model.to(dtype)`, except that `keep_fp32` parameters keep float32 values in a bf16/fp16 model."""
    kept = {name: model.get_parameter(name).detach().to(kept_dtype(dtype)) for name in fp32_parameter_names(model)}
    model.to(dtype)
    for name, values in kept.items():
        model.get_parameter(name).data = values
    return model


def rows(values: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per-sample vectors [B, ...] expanded to the packed rows (broadcast when there is one sample)."""
    if values.shape[0] == 1:
        return values
    return values.repeat_interleave(torch.tensor(lengths, device=values.device), dim=0)


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x*scale + shift with the official rounding: each step computed in float32, stored in x's dtype."""
    return ((x * scale).to(x.dtype) + shift).to(x.dtype)


class AdaSingle(nn.Module):
    """Learned per-channel offsets added to slices of the shared timestep embedding ("ada: single").

    The embedding of width 6*dim is laid out (dim, layer, {shift, scale, gate}) with dim outermost;
    "in" is x*scale + shift (the learned scale carries the 1), "out" is x*gate. The tables stay
    float32 in a bf16 model and are added in float32, as in the official code (`keep_fp32`; see
    `cast_model` and the checkpoint loader): rounding them to bf16 alone costs ~0.2 % relative error.
    """

    keep_fp32 = True

    def __init__(self, dim: int, layers: tuple[str, ...] = ("attn", "mlp"), modes: tuple[str, ...] = ("in", "out")):
        super().__init__()
        for layer in layers:
            if "in" in modes:
                setattr(self, f"{layer}_shift", nn.Parameter(torch.zeros(dim)))
                setattr(self, f"{layer}_scale", nn.Parameter(torch.ones(dim)))
            if "out" in modes:
                setattr(self, f"{layer}_gate", nn.Parameter(torch.zeros(dim)))

    def modulate_in(self, x: torch.Tensor, emb: torch.Tensor, layer: str) -> torch.Tensor:
        """emb: [rows or 1, dim, 3] slice of the embedding for this layer."""
        scale = emb[..., 1].float() + getattr(self, f"{layer}_scale").float()
        shift = emb[..., 0].float() + getattr(self, f"{layer}_shift").float()
        return scale_shift(x, scale, shift)

    def modulate_out(self, x: torch.Tensor, emb: torch.Tensor, layer: str) -> torch.Tensor:
        gate = emb[..., 2].float() + getattr(self, f"{layer}_gate").float()
        return (x * gate).to(x.dtype)


class GeluMLP(nn.Module):
    """7B MLP: Linear -> GELU (tanh) -> Linear, with biases."""

    def __init__(self, dim: int, expand_ratio: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * expand_ratio)
        self.proj_out = nn.Linear(dim * expand_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


class SwiGLUMLP(nn.Module):
    """3B MLP: proj_out(SiLU(proj_in_gate(x)) * proj_in(x)), hidden rounded up to a multiple of 256."""

    def __init__(self, dim: int, expand_ratio: int, multiple_of: int = 256):
        super().__init__()
        hidden = int(2 * dim * expand_ratio / 3)
        hidden = multiple_of * math.ceil(hidden / multiple_of)
        self.proj_in_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)
        self.proj_in = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class PatchLinear(nn.Module):
    """Holds the `proj` Linear of the patch-in/patch-out layers (checkpoint names `vid_in.proj`, `vid_out.proj`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def patchify(vid: torch.Tensor, shapes: list[tuple[int, int, int]], p: int) -> torch.Tensor:
    """Packed [sum THW, C] latents -> packed [sum T(H/p)(W/p), p*p*C] tokens, features ordered (py, px, c)."""
    out = []
    for x, (t, h, w) in zip(vid.split([t * h * w for t, h, w in shapes]), shapes):
        x = x.view(t, h // p, p, w // p, p, -1).permute(0, 1, 3, 2, 4, 5)
        out.append(x.reshape(t * (h // p) * (w // p), -1))
    return torch.cat(out)


def unpatchify(x: torch.Tensor, shapes: list[tuple[int, int, int]], p: int) -> torch.Tensor:
    """Inverse of `patchify` for the packed latent shapes `shapes` (before patching)."""
    out = []
    for y, (t, h, w) in zip(x.split([t * (h // p) * (w // p) for t, h, w in shapes]), shapes):
        y = y.view(t, h // p, w // p, p, p, -1).permute(0, 1, 3, 2, 4, 5)
        out.append(y.reshape(t * h * w, -1))
    return torch.cat(out)
