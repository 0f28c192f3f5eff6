"""Layers of the SeedVR2 causal video VAE (`video_vae_v3`), in plain torch.

Every temporal operation is causal: output frame t depends on input frames <= t only. That is what lets a
long clip be processed in temporal chunks with bounded memory: a `StreamCache` (a dict keyed by module)
carries, from one chunk to the next, the few input frames each causal conv still needs. `cache=None` means
"this call sees the whole clip". Norms and attention work per frame, so they need no cache at all. Convs and
resnet blocks read and write the cache around a `step` that sees tensors only: what `torch.compile` compiles.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StreamCache = dict[nn.Module, Tensor]

NORM_EPS = 1e-6
# Attention scores one SDPA call may hold (query rows x keys): 2**26 is 256 MiB in fp32. A 1080p frame's
# mid-block has 32,400 tokens, whose full score matrix would be 4 GiB; chunks of queries bound it.
ATTENTION_SCORE_BUDGET = 1 << 26
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return value if isinstance(value, tuple) else (value, value, value)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded in time only at the front, by repeating frame 0 (`k_t - 1` copies).

    Zero padding in time would make the first frames depend on a fictitious black past; repeating frame 0 is
    what the checkpoint was trained with. In streaming mode the head is instead the last `k_t - s_t` frames of
    the previous chunk's input, which makes chunked results equal to whole-clip results.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        spatial_padding: int | None = None,
    ):
        kernel = _triple(kernel_size)
        pad = kernel[1] // 2 if spatial_padding is None else spatial_padding
        super().__init__(in_channels, out_channels, kernel, stride=_triple(stride), padding=(0, pad, pad))
        self.max_input_bytes = math.inf

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        previous = None if cache is None else cache.get(self)
        y, tail = self.step(x, previous, streaming=cache is not None)
        if tail is not None:
            cache[self] = tail
        return y

    def step(self, x: Tensor, previous: Tensor | None, streaming: bool) -> tuple[Tensor, Tensor | None]:
        """`forward` on tensors alone: `previous` is the cached head (None: the clip starts here); returns
        the output and, when `streaming`, the input frames the next chunk needs (None if it needs none).

        Keeping the module-keyed cache out of here is what lets one compiled graph serve every instance.
        """
        kernel_t, stride_t = self.kernel_size[0], self.stride[0]
        keep = kernel_t - stride_t
        if previous is None and x.shape[2] == 1 and kernel_t > 1:
            tail = x.expand(-1, -1, keep, -1, -1).clone() if streaming and keep > 0 else None
            return self._conv_in_row_bands(x, weight=self.weight_over_one_frame()), tail
        head = x[:, :, :1].expand(-1, -1, kernel_t - 1, -1, -1) if previous is None else previous
        if head.shape[2]:
            x = torch.cat([head, x], dim=2)
        if (x.shape[2] - kernel_t) % stride_t:
            raise ValueError(
                f"temporal stride {stride_t} does not tile {x.shape[2]} padded frames: "
                "chunk sizes must be multiples of the VAE's temporal factor"
            )
        tail = x[:, :, x.shape[2] - keep :].clone() if streaming and keep > 0 else None
        return self._conv_in_row_bands(x), tail

    def weight_over_one_frame(self) -> Tensor:
        """The kernel summed over time, [out, in, 1, kh, kw]: a clip that starts with its only frame (an
        image) is padded with copies of that frame, so every temporal tap reads it, and one tap of the
        summed kernel gives the same output at a third of the FLOPs, without the padded copy. Summed in
        float32, then rounded once to the weights' dtype."""
        return self.weight.sum(2, keepdim=True, dtype=torch.float32).to(self.weight.dtype)

    def _conv_in_row_bands(
        self, x: Tensor, pad_rows: tuple[int, int] | None = None, weight: Tensor | None = None
    ) -> Tensor:
        """Spatially padded conv, computed in bands of output rows when the input exceeds `max_input_bytes`.

        At 720p and above one conv's input is gigabytes; whole, it needs a large workspace and can pass the
        2**31-element limit of 32-bit-indexed kernels. Each band reads its own halo rows: same result.
        `pad_rows` (zero rows above, below) replaces the conv's own row padding, for a caller that brings
        neighbouring rows itself (a sequence-parallel rank's band, seedvr/bands.py). `weight` replaces the
        conv's own (`weight_over_one_frame`). Band bounds are plain integer arithmetic on the shape, so a
        compiled caller gets shape guards, not a host sync.
        """
        weight = self.weight if weight is None else weight
        size_bytes, limit = x.numel() * x.element_size(), self.max_input_bytes
        bands = 1 if limit == math.inf else -(-size_bytes // limit)  # ceil, in integers
        if bands <= 1 and pad_rows is None:
            return F.conv3d(x, weight, self.bias, self.stride, self.padding)
        (_, pad_h, pad_w), (_, kernel_h, _), (_, stride_h, _) = self.padding, self.kernel_size, self.stride
        top, bottom = (pad_h, pad_h) if pad_rows is None else pad_rows
        # operator.index: a compiled caller specialises on the height and band count here (large inputs
        # only), so the bounds stay plain integers; symbolic ones make guards that take a minute to trace.
        height = operator.index(x.shape[3])
        rows_out = (height + top + bottom - kernel_h) // stride_h + 1
        count = operator.index(min(max(bands, 1), rows_out))
        size, larger = rows_out // count, rows_out % count  # as tensor_split: the first `larger` have a row more
        out = None
        for band in range(count):
            first, stop_row = band * size + min(band, larger), (band + 1) * size + min(band + 1, larger)
            start, stop = first * stride_h - top, (stop_row - 1) * stride_h + kernel_h - top
            rows = x[:, :, :, max(start, 0) : min(stop, height)]
            if start < 0 or stop > height:
                rows = F.pad(rows, (0, 0, max(-start, 0), max(stop - height, 0)))
            y = F.conv3d(rows, weight, self.bias, self.stride, (0, 0, pad_w))
            if count == 1:
                return y  # one band (a caller's own padding): no copy into a frame-sized output
            if out is None:
                out = y.new_empty(*y.shape[:3], rows_out, y.shape[4])
            out[:, :, :, first:stop_row] = y
        return out


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per (sample, frame), computed in float32 and cast back.

    Per-frame statistics are what the checkpoint expects (the official code folds time into the batch);
    looping over frames also bounds the float32 temporary to a single frame.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            return self._normalize(x)
        if torch.compiler.is_compiling():
            # Frames folded into the batch: one graph for any frame count (a loop would unroll and
            # specialise on it), and the compiled kernels do not materialise the float32 copy anyway.
            b, c, t, h, w = x.shape
            frames = self._normalize(x.transpose(1, 2).reshape(b * t, c, h, w))
            return frames.reshape(b, t, c, h, w).transpose(1, 2).contiguous()
        out = torch.empty_like(x)
        for t in range(x.shape[2]):
            out[:, :, t] = self._normalize(x[:, :, t])
        return out

    def _normalize(self, frame: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(frame.float(), self.num_groups, weight, bias, self.eps).to(frame.dtype)


def _rename_legacy_attention_keys(
    module: nn.Module, state_dict: dict, prefix: str, *args: object
) -> None:
    """Load pre-hook: old diffusers checkpoints name the attention linears `query/key/value/proj_attn`."""
    for suffix in ("weight", "bias"):
        for old, new in LEGACY_ATTENTION_NAMES.items():
            old_key, new_key = f"{prefix}{old}.{suffix}", f"{prefix}{new}.{suffix}"
            if old_key in state_dict and new_key not in state_dict:
                state_dict[new_key] = state_dict.pop(old_key)


class FrameAttention(nn.Module):
    """Single-head self-attention over the h·w tokens of each frame, with a residual (mid-block attention).

    Frames are attended one at a time and queries in chunks, so the extra memory is O(h·w x chunk)
    whatever kernel SDPA picks (the head dimension, 512, is beyond some fused kernels).
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = FrameGroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.register_load_state_dict_pre_hook(_rename_legacy_attention_keys)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        for t in range(x.shape[2]):
            frame = x[:, :, t]
            b, c, h, w = frame.shape
            tokens = self.group_norm(frame).flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1 head, h·w, C]
            attended = self._attend(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
            out[:, :, t] = frame + self.to_out[0](attended).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return out

    @staticmethod
    def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Softmax attention of 4-D [B, 1, n, C] tensors (scale 1/sqrt(C)), in chunks of query rows."""
        rows = max(1, ATTENTION_SCORE_BUDGET // k.shape[2])
        out = torch.empty_like(q)
        for start in range(0, q.shape[2], rows):
            out[:, :, start : start + rows] = F.scaled_dot_product_attention(q[:, :, start : start + rows], k, v)
        return out


class ResnetBlock(nn.Module):
    """norm → SiLU → causal conv, twice, plus a (1×1×1-projected when the width changes) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def convs(self) -> tuple[CausalConv3d, ...]:
        """The causal convs, in the order of `step`'s `previous` and tails."""
        return (self.conv1, self.conv2) + (() if self.conv_shortcut is None else (self.conv_shortcut,))

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        convs = self.convs()
        previous = tuple(None if cache is None else cache.get(conv) for conv in convs)
        out, tails = self.step(x, previous, streaming=cache is not None)
        for conv, tail in zip(convs, tails):
            if tail is not None:
                cache[conv] = tail
        return out

    def step(
        self, x: Tensor, previous: tuple[Tensor | None, ...], streaming: bool
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """The block on tensors alone (`CausalConv3d.step` for each of `convs()`): what
        `seedvr.models.compiled` compiles, one graph for all blocks of a shape rather than one per block."""
        h, tail1 = self.conv1.step(F.silu(self.norm1(x), inplace=True), previous[0], streaming)
        h, tail2 = self.conv2.step(F.silu(self.norm2(h), inplace=True), previous[1], streaming)
        if self.conv_shortcut is None:
            return h.add_(x), (tail1, tail2)
        skip, tail3 = self.conv_shortcut.step(x, previous[2], streaming)
        return h.add_(skip), (tail1, tail2, tail3)


class Downsample(nn.Module):
    """Stride-2 conv (3×3; 3 causal frames when temporal) after one zero row and column at bottom/right."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        kernel_t, stride_t = (3, 2) if temporal else (1, 1)
        self.conv = CausalConv3d(
            channels, channels, (kernel_t, 3, 3), stride=(stride_t, 2, 2), spatial_padding=0
        )

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)), cache)


def depth_to_space(x: Tensor, ratio_t: int, ratio_s: int) -> Tensor:
    """[B, (x y z C), f, h, w] -> [B, C, f·r_t, h·r_s, w·r_s]; channel blocks: row, column, sub-frame."""
    b, channels, f, h, w = x.shape
    c = channels // (ratio_s * ratio_s * ratio_t)
    x = x.reshape(b, ratio_s, ratio_s, ratio_t, c, f, h, w)
    x = x.permute(0, 4, 5, 3, 6, 1, 7, 2)  # b c f z h x w y
    return x.reshape(b, c, f * ratio_t, h * ratio_s, w * ratio_s)


class Upsample(nn.Module):
    """Learned depth-to-space (1×1×1 conv to 4·r_t sub-pixels per channel), then a causal 3×3×3 conv.

    With temporal upsampling the clip's first frame yields one frame, not two, so m frames become 2m − 1
    (the first latent stands for a single frame); continuation chunks keep all 2m.
    """

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.ratio_t = 2 if temporal else 1
        self.upscale_conv = nn.Conv3d(channels, channels * 4 * self.ratio_t, kernel_size=1)
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        starts_clip = cache is None or self.conv not in cache  # the conv caches from the first chunk on
        frames = []
        for f in range(x.shape[2]):  # frame by frame: the sub-pixel tensor has 4·r_t times the channels
            sub = depth_to_space(self.upscale_conv(x[:, :, f : f + 1]), self.ratio_t, 2)
            frames.append(sub[:, :, :1] if f == 0 and starts_clip else sub)
        return self.conv(torch.cat(frames, dim=2), cache)


class MidBlock(nn.Module):
    """resnet → (attention) → resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([FrameAttention(channels, groups)] if attention else [])

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        x = self.resnets[0](x, cache)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x, cache)


def _resnets(in_channels: int, out_channels: int, num_layers: int, groups: int) -> nn.ModuleList:
    widths = [in_channels] + [out_channels] * num_layers
    return nn.ModuleList(ResnetBlock(widths[i], widths[i + 1], groups) for i in range(num_layers))


class _Stage(nn.Module):
    """Resnets, then an optional resampler kept in a list named as in the checkpoints."""

    resampler_name: str

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, resampler: nn.Module | None):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, groups)
        setattr(self, self.resampler_name, nn.ModuleList([resampler] if resampler is not None else []))

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        for layer in (*self.resnets, *getattr(self, self.resampler_name)):
            x = layer(x, cache)
        return x


class DownBlock(_Stage):
    """Encoder stage: resnets, then (except in the last stage) a downsampler."""

    resampler_name = "downsamplers"


class UpBlock(_Stage):
    """Decoder stage: resnets, then (except in the last stage) an upsampler."""

    resampler_name = "upsamplers"
