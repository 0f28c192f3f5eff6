"""SeedVR2's causal video VAE (`video_vae_v3`, config `s8_c16_t4_inflation_sd3`) in plain torch.

8× spatial and 4× temporal compression to 16 latent channels; frame counts `4n+1 ↔ n+1`. The state dict
matches the official checkpoint `ema_vae.pth` key for key (legacy attention names load too). Long clips are
processed in causal temporal chunks that give the same result as processing them whole.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedvr.models.vae_layers import (
    NORM_EPS,
    CausalConv3d,
    DownBlock,
    Downsample,
    FrameGroupNorm,
    MidBlock,
    StreamCache,
    UpBlock,
    Upsample,
)

logger = logging.getLogger(__name__)

LOGVAR_RANGE = (-30.0, 20.0)

# Official constructor arguments that only matter for training or for the official wrapper's bookkeeping.
IGNORED_KEYS = frozenset(
    {"freeze_encoder", "gradient_checkpoint", "sample_size", "scaling_factor", "force_upcast"}
)
# Official arguments that follow from the others (checked against them) or only set the chunk length.
OFFICIAL_DERIVED_KEYS = frozenset(
    {
        "down_block_types",
        "up_block_types",
        "spatial_downsample_factor",
        "temporal_downsample_factor",
        "slicing_sample_min_size",
    }
)
# Official arguments whose value we check but that have no parameter of their own here.
FIXED_VALUES: dict[str, Any] = {
    "act_fn": "silu",
    "inflation_mode": "pad",  # only changes how 2-D weights are inflated; the checkpoint is 3-D already
    "time_receptive_field": "full",
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "slicing_up_num": 0,
    "extra_cond_dim": None,
}


@dataclass(frozen=True)
class VAEParams:
    """Architecture (official names, defaults = the released VAE) plus our memory knobs."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    temporal_scale_num: int = 2
    attention: bool = True
    # Streaming: frames per encoder chunk after the first (which has one more), latents per decoder chunk
    # after the first (which has one more). None processes every clip whole.
    encode_chunk_frames: int | None = 4
    decode_chunk_latents: int | None = 1
    # A conv whose input is larger than this runs in bands of rows (the official `conv_max_mem` 0.5 GiB).
    conv_max_bytes: int | None = 2**29

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2**self.temporal_scale_num


class Posterior(NamedTuple):
    """Diagonal Gaussian over latents; `logvar` is already clamped to LOGVAR_RANGE."""

    mean: Tensor
    logvar: Tensor

    @classmethod
    def from_moments(cls, moments: Tensor) -> Posterior:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(*LOGVAR_RANGE))

    def sample(self, noise: Tensor) -> Tensor:
        return self.mean + torch.exp(0.5 * self.logvar) * noise


class Encoder(nn.Module):
    """[B,3,T,H,W] -> moments [B,32,(T-1)/4+1,H/8,W/8] (4 stages, mid block, norm, conv)."""

    def __init__(self, p: VAEParams):
        super().__init__()
        widths, groups, n = p.block_out_channels, p.norm_num_groups, len(p.block_out_channels)
        self.conv_in = CausalConv3d(p.in_channels, widths[0], 3)
        # The temporal downsamplers are the last `temporal_scale_num` ones (the last stage has none).
        self.down_blocks = nn.ModuleList(
            DownBlock(
                widths[max(i - 1, 0)],
                widths[i],
                p.layers_per_block,
                groups,
                Downsample(widths[i], temporal=i >= n - 1 - p.temporal_scale_num) if i < n - 1 else None,
            )
            for i in range(n)
        )
        self.mid_block = MidBlock(widths[-1], groups, p.attention)
        self.conv_norm_out = FrameGroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(widths[-1], 2 * p.latent_channels, 3)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        x = self.conv_in(x, cache)
        for block in (*self.down_blocks, self.mid_block):
            x = block(x, cache)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True), cache)


class Decoder(nn.Module):
    """Latent [B,16,T',h,w] -> [B,3,4(T'-1)+1,8h,8w] (conv, mid block, 4 stages, norm, conv)."""

    def __init__(self, p: VAEParams):
        super().__init__()
        widths, groups, n = p.block_out_channels[::-1], p.norm_num_groups, len(p.block_out_channels)
        self.conv_in = CausalConv3d(p.latent_channels, widths[0], 3)
        self.mid_block = MidBlock(widths[0], groups, p.attention)
        # The temporal upsamplers are the first `temporal_scale_num` ones.
        self.up_blocks = nn.ModuleList(
            UpBlock(
                widths[max(i - 1, 0)],
                widths[i],
                p.layers_per_block + 1,
                groups,
                Upsample(widths[i], temporal=i < p.temporal_scale_num) if i < n - 1 else None,
            )
            for i in range(n)
        )
        self.conv_norm_out = FrameGroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(widths[-1], p.out_channels, 3)

    def forward(self, z: Tensor, cache: StreamCache | None = None) -> Tensor:
        x = self.conv_in(z, cache)
        for block in (self.mid_block, *self.up_blocks):
            x = block(x, cache)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True), cache)


def _stream(fn: Callable[[Tensor, StreamCache | None], Tensor], x: Tensor, chunk: int | None) -> Tensor:
    """Run a causal `fn` over time chunks `[0 .. chunk]`, then `chunk` at a time, carrying conv caches.

    The first chunk has one extra step because the first frame (latent) is encoded on its own.
    """
    if chunk is None or x.shape[2] - 1 <= chunk:
        return fn(x, None)
    cache: StreamCache = {}
    pieces = [x[:, :, : 1 + chunk], *x[:, :, 1 + chunk :].split(chunk, dim=2)]
    logger.debug("VAE streaming %d steps in %d chunks", x.shape[2], len(pieces))
    return torch.cat([fn(piece, cache) for piece in pieces], dim=2)


class VideoVAE(nn.Module):
    """`encode`: [B,3,T,H,W] in [-1,1] -> sampled latent [B,16,(T-1)/4+1,H/8,W/8]; `decode` inverts it."""

    def __init__(self, params: VAEParams):
        super().__init__()
        self.params = params
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)
        self.encode_chunk_frames: int | None = None
        self.decode_chunk_latents: int | None = None
        self.set_chunking(params.encode_chunk_frames, params.decode_chunk_latents)
        self.set_conv_memory_limit(params.conv_max_bytes)

    def set_chunking(self, encode_frames: int | None, decode_latents: int | None) -> None:
        """Chunk sizes trade speed for memory only: results do not depend on them."""
        factor = self.params.temporal_factor
        if encode_frames is not None and (encode_frames <= 0 or encode_frames % factor):
            raise ValueError(
                f"encode_chunk_frames must be a positive multiple of {factor} or None, got {encode_frames}"
            )
        if decode_latents is not None and decode_latents <= 0:
            raise ValueError(f"decode_chunk_latents must be positive or None, got {decode_latents}")
        self.encode_chunk_frames, self.decode_chunk_latents = encode_frames, decode_latents

    def set_conv_memory_limit(self, max_bytes: int | None) -> None:
        """Convs with a larger input are computed in bands of rows; same result, bounded workspace."""
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"conv_max_bytes must be positive or None, got {max_bytes}")
        for module in self.modules():
            if isinstance(module, CausalConv3d):
                module.max_input_bytes = math.inf if max_bytes is None else max_bytes

    def _first_weight(self) -> Tensor:
        """Inputs follow the weights' device and dtype."""
        return self.encoder.conv_in.weight

    def _check_video(self, x: Tensor) -> None:
        p = self.params
        if x.ndim != 5 or x.shape[1] != p.in_channels:
            raise ValueError(f"VAE encode expects x [B,{p.in_channels},T,H,W], got shape {tuple(x.shape)}")
        frames, height, width = x.shape[2:]
        if (frames - 1) % p.temporal_factor:
            raise ValueError(f"VAE encode needs T = {p.temporal_factor}n+1 frames (or 1), got T={frames}")
        if height % p.spatial_factor or width % p.spatial_factor:
            raise ValueError(
                f"VAE encode needs H and W multiples of {p.spatial_factor}, got H={height} W={width}"
            )

    @torch.no_grad()
    def encode_moments(self, x: Tensor) -> Tensor:
        """Encoder output [B, 2·latent, T', h, w]: mean, then unclamped log-variance.

        The input is cast to the weights' device and dtype (the official run feeds bf16 to a bf16 VAE)."""
        self._check_video(x)
        weights = self._first_weight()
        x = x.to(device=weights.device, dtype=weights.dtype)
        return _stream(self.encoder, x, self.encode_chunk_frames)

    def encode_posterior(self, x: Tensor) -> Posterior:
        return Posterior.from_moments(self.encode_moments(x))

    def encode(
        self, x: Tensor, noise: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Posterior sample `mean + std·noise` (what SeedVR2 conditions on, not the mean).

        `noise` defaults to `torch.randn` drawn after encoding, on the generator's device (the global RNG of
        the latent's device without one), in the latent's dtype — the official draw order and arguments.
        """
        posterior = self.encode_posterior(x)
        if noise is None:
            device = generator.device if generator is not None else posterior.mean.device
            noise = torch.randn(
                posterior.mean.shape, generator=generator, device=device, dtype=posterior.mean.dtype
            )
        elif noise.shape != posterior.mean.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} differs from the latent shape "
                f"{tuple(posterior.mean.shape)}"
            )
        return posterior.sample(noise.to(posterior.mean))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """[B,16,T',h,w] -> [B,3,4(T'-1)+1,8h,8w], not clamped; input cast to the weights."""
        p = self.params
        if z.ndim != 5 or z.shape[1] != p.latent_channels:
            raise ValueError(
                f"VAE decode expects z [B,{p.latent_channels},T,h,w], got shape {tuple(z.shape)}"
            )
        weights = self._first_weight()
        z = z.to(device=weights.device, dtype=weights.dtype)
        return _stream(self.decoder, z, self.decode_chunk_latents)


def _params_from_config(config: Mapping[str, Any]) -> VAEParams:
    field_names = set(VAEParams.__dataclass_fields__)
    unknown = sorted(set(config) - field_names - IGNORED_KEYS - set(FIXED_VALUES) - OFFICIAL_DERIVED_KEYS)
    if unknown:
        raise ValueError(f"unknown VAE config keys: {unknown}")
    for key, expected in FIXED_VALUES.items():
        if key in config and config[key] != expected:
            raise ValueError(f"VAE config {key}={config[key]!r} is not supported (only {expected!r})")
    fields = {k: config[k] for k in field_names if k in config}
    if "block_out_channels" in fields:
        fields["block_out_channels"] = tuple(fields["block_out_channels"])
    if "slicing_sample_min_size" in config:  # the official chunk length in frames
        split = int(config["slicing_sample_min_size"])
        fields.setdefault("encode_chunk_frames", split)
        fields.setdefault("decode_chunk_latents", max(split // 2 ** fields.get("temporal_scale_num", 2), 1))
    params = VAEParams(**fields)
    _check_block_types(config, len(params.block_out_channels))
    for key, actual in (
        ("spatial_downsample_factor", params.spatial_factor),
        ("temporal_downsample_factor", params.temporal_factor),
    ):
        if key in config and config[key] != actual:
            raise ValueError(
                f"VAE config {key}={config[key]} contradicts the block layout, which gives {actual}"
            )
    if params.temporal_scale_num > len(params.block_out_channels) - 1:
        raise ValueError(
            f"VAE config temporal_scale_num={params.temporal_scale_num} exceeds the "
            f"{len(params.block_out_channels) - 1} resampling stages"
        )
    return params


def _check_block_types(config: Mapping[str, Any], num_blocks: int) -> None:
    for key, block in (("down_block_types", "DownEncoderBlock3D"), ("up_block_types", "UpDecoderBlock3D")):
        types = list(config.get(key, [block] * num_blocks))
        if types != [block] * num_blocks:
            raise ValueError(f"VAE config {key} must be {num_blocks} × {block!r}, got {types}")


def build_vae(config: Mapping[str, Any]) -> VideoVAE:
    """Build the VAE from the official constructor arguments (the `vae.model` section of our configs).

    Weights get torch's default init; load a checkpoint. Build under `torch.device("meta")` to avoid
    allocating them twice. Our own `VAEParams` fields (chunk sizes, conv memory limit) may be given too.
    """
    return VideoVAE(_params_from_config(config))
