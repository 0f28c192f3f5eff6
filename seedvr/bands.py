"""One window computed by all ranks of a sequence-parallel group together: the frame cut into bands of rows.

Each rank owns a band of whole latent rows, and at every layer the rows above it (8 pixel rows per latent
row in the encoder's input, 1 at the mid block): preprocessing, VAE encode, VAE decode and the colour fix
each compute only the rank's rows, and the result equals one process' untiled result up to float
round-off. What crosses the band edges:

* **convolutions**: before each one, the rows its kernel reads beyond the band (one row above and below for
  3x3 kernels, one below for the stride-2 downsampler) come from the ranks that own them (point-to-point);
  zero padding is applied only at the frame's top and bottom. Temporal caches stay per rank (they cover the
  band only: every rank streams the same frames in the same chunks).
* **GroupNorm** (per frame): each band's count, mean and centred sum of squares per (frame, group),
  gathered and combined in float64.
* **mid-block attention**: each rank projects its own tokens; keys and values are all-gathered, so each
  rank attends its queries to the whole frame.
* **the wavelet colour fix** reads 2**levels - 1 rows beyond the band (the sum of its dilations), AdaIN
  all-reduces its moments.

Bands are whole latent rows, so the encoder's stride-2 steps and the decoder's depth-to-space steps map a
band to exactly the band of the next resolution. The models stay plain modules: `band_mode` installs
band-aware methods on the VAE's layer instances for the duration of a call and removes them after.
docs/parallel.md ("One window: bands of rows") has the halo sizes and the bytes exchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from seedvr.models.vae import VideoVAE
from seedvr.models.vae_layers import CausalConv3d, Downsample, FrameAttention, FrameGroupNorm, Upsample
from seedvr.parallel import Ranks, count_work, gather_uneven, sharded_dit, split_work
from seedvr.pipeline import geometry, sampling
from seedvr.pipeline.colorfix import WAVELET_LEVELS, adain_color_fix, color_fix, wavelet_color_fix
from seedvr.pipeline.restore import (
    Plan, RestorationModels, RestoreOptions, Stages, denoise, posterior_noise, restore_window, to_video,
)
from seedvr.pipeline.tiling import SPATIAL_FACTOR

Span = tuple[int, int]  # rows [start, stop)

RESIZE_ROW_CHUNK = 32  # output rows per matrix product of the row resize: keeps its cost linear in the band


def split_rows(rows: int, size: int) -> list[int]:
    """Bounds of `size` contiguous runs of `rows` latent rows, lengths differing by at most one."""
    return [r * rows // size for r in range(size + 1)]


@dataclass(frozen=True)
class Bands:
    """A latent grid of `rows` x `cols` cut into one band of whole latent rows per rank.

    At a layer whose maps are `factor` times the latent grid (8 at the VAE's pixels), rank r owns rows
    [bounds[r] * factor, bounds[r + 1] * factor). A band may be empty (more ranks than latent rows): the
    rank then computes nothing but still joins every exchange.
    """

    ranks: Ranks
    bounds: tuple[int, ...]
    cols: int

    @classmethod
    def even(cls, ranks: Ranks, rows: int, cols: int) -> Bands:
        return cls(ranks, tuple(split_rows(rows, ranks.size)), cols)

    @property
    def rows(self) -> int:
        return self.bounds[-1]

    def spans(self, factor: int = 1) -> list[Span]:
        return [(a * factor, b * factor) for a, b in zip(self.bounds, self.bounds[1:])]

    def span(self, factor: int = 1) -> Span:
        return self.spans(factor)[self.ranks.rank]


# ------------------------------------------------------------------------------------------ collectives


def _overlap(x: Span, y: Span) -> Span:
    return max(x[0], y[0]), min(x[1], y[1])


def exchange_rows(x: Tensor, owned: Sequence[Span], wanted: Sequence[Span], ranks: Ranks) -> Tensor:
    """Rows `wanted[rank]` (dim -2) of a tensor whose rows are split as `owned`; `x` holds `owned[rank]`.
    Wanted rows outside the frame (before 0, from the last owned row on) are zeros.

    Every rank calls it with the same spans; each sends the others the rows they want from its own, so the
    messages go only between ranks that share rows (neighbours, unless a band is thinner than the halo).
    Rows of `x` past its span are ignored. The result is one new tensor, or a view of `x` if it has it all.
    """
    me, (start, _), (lo, hi), height = ranks.rank, owned[ranks.rank], wanted[ranks.rank], owned[-1][1]
    outside = ((lo, -lo), (height, hi - height)) if lo < hi else ()
    pieces = [(row, x.new_zeros(*x.shape[:-2], n, x.shape[-1])) for row, n in outside if n > 0]
    ops = []
    for q in range(ranks.size):
        r0, r1 = _overlap(owned[q], wanted[me])
        if q == me:
            if r0 < r1:
                pieces.append((r0, x[..., r0 - start : r1 - start, :]))
            continue
        peer = dist.get_global_rank(ranks.group, q)
        s0, s1 = _overlap(owned[me], wanted[q])
        if s0 < s1:
            ops.append(dist.P2POp(dist.isend, x[..., s0 - start : s1 - start, :].contiguous(), peer, ranks.group))
        if r0 < r1:
            received = x.new_empty(*x.shape[:-2], r1 - r0, x.shape[-1])
            ops.append(dist.P2POp(dist.irecv, received, peer, ranks.group))
            pieces.append((r0, received))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    if len(pieces) <= 1:
        return pieces[0][1] if pieces else x[..., :0, :]
    return torch.cat([piece for _, piece in sorted(pieces, key=lambda p: p[0])], dim=-2)


def gather_rows(x: Tensor, spans: Sequence[Span], ranks: Ranks, everywhere: bool = False) -> Tensor:
    """The whole tensor from every rank's rows (dim -2, split as `spans`): on the main rank (an empty
    tensor elsewhere), or on every rank with `everywhere`."""
    return gather_uneven(x, [b - a for a, b in spans], -2, ranks, everywhere)


def _all_reduce(x: Tensor, ranks: Ranks) -> Tensor:
    if ranks.group is not None:
        dist.all_reduce(x, group=ranks.group)
    return x


# ------------------------------------------------------------------------------------- band-aware layers


@dataclass(frozen=True)
class _Layer:
    """Where a conv or attention sits: its input maps are `factor` times the latent grid."""

    factor: int
    work: str  # the work counter its output rows go to


def _layers(vae: VideoVAE) -> dict[nn.Module, _Layer]:
    """Every causal conv and attention of the VAE with its resolution, in the order the modules run."""
    layers: dict[nn.Module, _Layer] = {}
    for part, factor, work in (
        (vae.encoder, vae.params.spatial_factor, "vae_encode_rows"),
        (vae.decoder, 1, "vae_decode_rows"),
    ):
        for module in part.modules():
            if isinstance(module, Downsample):
                layers[module.conv] = _Layer(factor, work)
                factor //= 2
            elif isinstance(module, Upsample):
                factor *= 2  # its conv runs after the depth-to-space
            elif isinstance(module, (CausalConv3d, FrameAttention)):
                layers.setdefault(module, _Layer(factor, work))
    return layers


def _conv_input(span: Span, kernel: int, stride: int, pad: int) -> Span:
    """Input rows that the conv's output rows for an input band read (beyond the frame: its zero padding)."""
    first, stop = span[0] // stride, span[1] // stride
    if first == stop:
        return span[0], span[0]
    return first * stride - pad, (stop - 1) * stride + kernel - pad


def _band_conv(conv: CausalConv3d, layer: _Layer, bands: Bands, x: Tensor, weight: Tensor | None = None) -> Tensor:
    """`CausalConv3d._conv_in_row_bands` for this rank's band: neighbours' rows in, zero rows only at the
    frame's edges. The zero row the downsampler appends below every band is never read: the rows come
    from the bands' owned spans, and the frame's own zero row from `exchange_rows`."""
    weight = conv.weight if weight is None else weight
    (_, kernel, kernel_w), (_, stride, stride_w), (_, pad, pad_w) = weight.shape[2:], conv.stride, conv.padding
    owned = bands.spans(layer.factor)
    rows = exchange_rows(x, owned, [_conv_input(span, kernel, stride, pad) for span in owned], bands.ranks)
    start, stop = owned[bands.ranks.rank]
    if start == stop:
        frames = (x.shape[2] - weight.shape[2]) // conv.stride[0] + 1
        width = (x.shape[4] + 2 * pad_w - kernel_w) // stride_w + 1
        return x.new_empty(x.shape[0], conv.out_channels, frames, 0, width)
    count_work(layer.work, (stop - start) // stride)
    return CausalConv3d._conv_in_row_bands(conv, rows, (0, 0), weight)


def _band_group_norm(norm: FrameGroupNorm, bands: Bands, x: Tensor) -> Tensor:
    """`FrameGroupNorm` over the whole frame: per (frame, group), each band's count, mean and variance
    (torch's group-norm kernel, one fast pass), gathered from every rank and combined in float64 (Chan's
    formula, stable whatever the mean), then one fused scale-and-shift per frame, in float32 like the norm."""
    frames = x.unsqueeze(2) if x.ndim == 4 else x
    b, c, t, h, w = frames.shape
    groups = norm.num_groups
    count = c // groups * h * w
    local = torch.zeros(3, t, b, groups, dtype=torch.float64, device=x.device)  # count, mean, squares
    for i in range(t if count else 0):  # frame by frame: a bf16 activation's float32 copy is one frame
        _, mean, rstd = torch.native_group_norm(frames[:, :, i].float().contiguous(), None, None, b, c, h * w, groups, 0.0)
        local[:, i] = torch.stack([torch.full_like(mean, count), mean, count * rstd.double().reciprocal().square()]).view(3, b, groups)
    n, means, squares = gather_uneven(local[None], [1] * bands.ranks.size, 0, bands.ranks).unbind(1)  # [R, T, B, G]
    total = n.sum(0)
    mean = torch.where(n > 0, n * means, 0).sum(0) / total
    squares = torch.where(n > 0, squares + n * (means - mean).square(), 0).sum(0)
    scale = (squares / total + norm.eps).rsqrt().float().repeat_interleave(c // groups, -1)  # [T, B, C]
    shift = -mean.float().repeat_interleave(c // groups, -1) * scale
    if norm.weight is not None:
        scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
    out = torch.empty_like(frames)
    for i in range(t):
        torch.addcmul(shift[i, :, :, None, None], frames[:, :, i], scale[i, :, :, None, None], out=out[:, :, i])
    return out.squeeze(2) if x.ndim == 4 else out


def _gathered_tokens(linear: nn.Linear, layer: _Layer, bands: Bands, tokens: Tensor) -> Tensor:
    """A key or value projection of this band's tokens [..., n, C], returned for the whole frame."""
    counts = [(b - a) * bands.cols * layer.factor for a, b in bands.spans(layer.factor)]
    local = nn.Linear.forward(linear, tokens)
    return gather_uneven(local, counts, local.ndim - 2, bands.ranks)


def _pointwise(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """The upsampler's 1x1x1 conv, which also has to accept an empty band."""
    if x.shape[3] == 0:
        return x.new_empty(x.shape[0], conv.out_channels, *x.shape[2:])
    return nn.Conv3d.forward(conv, x)


@contextmanager
def band_mode(vae: VideoVAE, bands: Bands) -> Iterator[None]:
    """Within the block, `vae` computes only this rank's band: its convs, norms and attention read what
    they need from the other ranks, which must run the same calls with their own bands."""
    patched: list[tuple[nn.Module, str]] = []

    def patch(module: nn.Module, name: str, method: object) -> None:
        setattr(module, name, method)
        patched.append((module, name))

    for module, layer in _layers(vae).items():
        if isinstance(module, CausalConv3d):
            patch(module, "_conv_in_row_bands", partial(_band_conv, module, layer, bands))
        else:
            for linear in (module.to_k, module.to_v):
                patch(linear, "forward", partial(_gathered_tokens, linear, layer, bands))
    for module in vae.modules():
        if isinstance(module, FrameGroupNorm):
            patch(module, "forward", partial(_band_group_norm, module, bands))
        elif isinstance(module, Upsample):
            patch(module.upscale_conv, "forward", partial(_pointwise, module.upscale_conv))
    try:
        yield
    finally:
        for module, name in patched:
            delattr(module, name)


def encode_band(vae: VideoVAE, video: Tensor, noise: Tensor, bands: Bands) -> Tensor:
    """This rank's latent rows of `vae.encode(whole video, noise=noise)`; `video` holds the rank's pixel
    rows, `noise` is the whole latent's noise (each rank slices its rows)."""
    start, stop = bands.span()
    with band_mode(vae, bands):
        return vae.encode(video, noise=noise[..., start:stop, :])


def decode_band(vae: VideoVAE, z: Tensor, bands: Bands) -> Tensor:
    """This rank's pixel rows of `vae.decode(z)`, from the whole latent `z`."""
    start, stop = bands.span()
    with band_mode(vae, bands):
        return vae.decode(z[..., start:stop, :])


# ------------------------------------------------------------------------ preprocessing and colour fix


def _row_resize_matrix(height: int, size: int) -> Tensor:
    """[size, height]: output row i of the antialiased bicubic resize is row i of this times the input rows."""
    if height == size:
        return torch.eye(height)
    eye = torch.eye(height)[None, None]
    return F.interpolate(eye, size=(size, height), mode="bicubic", antialias=True, align_corners=False)[0, 0]


def preprocess_band(frames: np.ndarray, plan: Plan, device: torch.device | str, rows: Span) -> Tensor:
    """Rows `rows` (of the padded frame) of `pipeline.preprocess(frames, plan, device)`, computing only those.

    torch's antialiased resize runs the columns, then the rows. Here the column pass runs on the input rows
    that a chunk of output rows reads; the row pass is a product with the rows of the resize's matrix (the
    resize of an identity), equal to torch's up to round-off. The grid padding replicates edge rows.
    """
    (size_h, size_w), (left, right, top, _) = plan.size, plan.pads
    if rows[0] == rows[1]:
        return torch.zeros(len(frames), 3, 0, size_w + left + right, device=device)
    source = (torch.arange(*rows) - top).clamp(0, size_h - 1)
    matrix = _row_resize_matrix(frames.shape[1], size_h)[source].to(device)
    out = []
    for frame in frames:
        bands = []
        for chunk in matrix.split(RESIZE_ROW_CHUNK):
            read = chunk.abs().sum(0).nonzero()
            lo, hi = int(read[0]), int(read[-1]) + 1
            x = torch.from_numpy(np.ascontiguousarray(frame[lo:hi])).to(device).permute(2, 0, 1).unsqueeze(0)
            x = geometry.to_unit_float(x)
            if x.shape[-1] != size_w:
                x = F.interpolate(x, size=(hi - lo, size_w), mode="bicubic", antialias=True, align_corners=False)
            bands.append((chunk[:, lo:hi] @ x).clamp(0.0, 1.0))
        out.append(torch.cat(bands, dim=-2))
    return geometry.to_model_range(geometry.pad_to_grid(torch.cat(out), (left, right, 0, 0)))


def _band_moments(ranks: Ranks, x: Tensor) -> tuple[Tensor, Tensor]:
    """`colorfix.frame_moments` of the whole frame from this band's rows: all-reduced sums, then squares."""
    local = torch.tensor([x.shape[-2] * x.shape[-1]], dtype=torch.float64, device=x.device)
    reduced = _all_reduce(torch.cat([x.sum((-2, -1), dtype=torch.float64).flatten(), local]), ranks)
    count = reduced[-1]
    mean = (reduced[:-1] / count).float().view(*x.shape[:-2], 1, 1)
    squares = _all_reduce((x - mean).square().sum((-2, -1), keepdim=True, dtype=torch.float64), ranks)
    return mean, (squares / (count - 1)).float()


def color_fix_band(name: str, content: Tensor, style: Tensor, spans: Sequence[Span], ranks: Ranks) -> Tensor:
    """This rank's rows of `color_fix(name, whole content, whole style)`; the frames are split as `spans`."""
    if name == "adain":
        return adain_color_fix(content, style, moments=partial(_band_moments, ranks))
    if name != "wavelet":
        return color_fix(name, content, style)
    halo, height = 2**WAVELET_LEVELS - 1, spans[-1][1]
    wanted = [(max(a - halo, 0), min(b + halo, height)) if a < b else (a, a) for a, b in spans]
    (start, stop), (lo, _) = spans[ranks.rank], wanted[ranks.rank]
    content, style = (exchange_rows(x, spans, wanted, ranks) for x in (content, style))
    return wavelet_color_fix(content, style)[..., start - lo : stop - lo, :]


# ------------------------------------------------------------------------------------------- the window


@torch.inference_mode()
def restore_window_bands(
    frames: np.ndarray, models: RestorationModels, options: RestoreOptions, plan: Plan, first_frame: int,
    stages: Stages, ranks: Ranks,
) -> Tensor:
    """`restore_window` computed by every rank of `ranks` together; the frames on the main rank.

    Every rank calls it with the same arguments. Preprocessing, VAE encode and decode and the colour fix
    run on the rank's band of rows; the latent is gathered on every rank for the DiT, split by windows or rows
    (`sharded_dit`); the colour-fixed rows are gathered on the main rank (others get an empty tensor).
    A tiled plan keeps its tiles (a tiled result is what a tiled single process computes): they are dealt
    to the ranks, the rest of the window as `restore_window` does it.
    """
    split = dataclasses.replace(models, dit=sharded_dit(models.dit, ranks))
    if plan.tiling is not None:
        tiled = dataclasses.replace(split, map_tiles=partial(split_work, ranks=ranks, everywhere=True))
        return restore_window(frames, tiled, options, plan, first_frame, stages)
    padded_h, padded_w = plan.padded_size
    bands = Bands.even(ranks, padded_h // SPATIAL_FACTOR, padded_w // SPATIAL_FACTOR)
    pixels = bands.span(SPATIAL_FACTOR)
    with stages("preprocess", report=False):
        lq = preprocess_band(frames, plan, models.device, pixels)
        count_work("preprocess_rows", lq.shape[-2])
    with stages("encode"):
        video = to_video(lq, models.dtype)
        noise = posterior_noise(video.shape[2], plan, models, options, first_frame)
        latent = gather_rows(encode_band(models.vae, video, noise, bands), bands.spans(), ranks, everywhere=True)
        cond = sampling.to_dit_latent(latent, models.scaling_factor)
    with stages("dit"):
        x_0 = denoise(cond, split, options, first_frame)
    with stages("vae_decode"):
        z = sampling.from_dit_latent(x_0, models.scaling_factor, models.dtype)
        out = decode_band(models.vae, z, bands)[0].permute(1, 0, 2, 3)[: len(frames)]
    with stages("postprocess", report=False):
        (left, right, top, _), size_h = plan.pads, plan.size[0]
        spans = [(min(max(a - top, 0), size_h), min(max(b - top, 0), size_h)) for a, b in bands.spans(SPATIAL_FACTOR)]
        start, stop = spans[ranks.rank]
        crop = (slice(start + top - pixels[0], stop + top - pixels[0]), slice(left, padded_w - right))
        fixed = color_fix_band(options.color_fix, out[..., crop[0], crop[1]], lq[..., crop[0], crop[1]], spans, ranks)
        count_work("colorfix_rows", stop - start)
        return gather_rows(fixed, spans, ranks)
