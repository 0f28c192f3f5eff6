"""User mode: restore a video or image file, window by window, streaming from file to file.

Per temporal window: resize to the output size and pad to the 16-pixel grid, pad the frame count to
4n+1, VAE-encode (optionally tiled) with seeded noise, one DiT step, VAE-decode, crop the padding,
colour-fix against the resized input, crossfade with the previous window, quantise, write. Only about
one window of frames is in memory at any time. docs/pipeline.md explains the rules and the choices.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seedvr import media

from . import geometry, sampling
from .colorfix import COLOR_FIXES, color_fix
from .noise import window_noise
from .temporal import Crossfade, check_window, default_overlap, floor_4n1, iter_windows, pad_to_4n1, plan_windows
from .tiling import SPATIAL_FACTOR, TileMap, Tiling, in_order, vae_decode, vae_encode

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 16
TEMPORAL_FACTOR = 4

# Memory model for the automatic window and tile choice, in bytes per pixel of the padded output
# frame, for 2-byte (bf16) compute; fp32 doubles them. Estimates from spec §9 with margin.
DIT_BYTES_PER_PIXEL = 200  # DiT activations per frame of the window (spec: ~130 at 720p)
FRAME_BYTES_PER_PIXEL = 64  # the window's frame buffers: input, padded LQ, decoded, colour-fixed
VAE_CHUNK_BYTES_PER_PIXEL = 8000  # one causal VAE chunk (5 frames of 128/256-channel feature maps)
MEMORY_FRACTION = 0.7  # of the free CUDA memory
CPU_BUDGET_BYTES = 4 << 30  # a conservative budget on CPU, where free memory says little
MIN_WINDOW, MAX_WINDOW = 5, 101
AUTO_TILE = 512
READ_CHUNK = 8  # frames decoded at a time


@dataclass
class RestorationModels:
    """What the manager hands over: loaded modules in eval mode and the positive text embedding."""

    dit: nn.Module
    vae: nn.Module
    text_emb: torch.Tensor
    scaling_factor: float = 0.9152
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    text_neg_emb: torch.Tensor | None = None  # only needed for cfg_scale != 1
    map_tiles: TileMap = in_order  # how VAE tiles are computed: here, or dealt to sequence-parallel ranks


@dataclass
class RestoreOptions:
    """Settings of one restoration. ``res_h * res_w`` is an area (aspect kept); ``scale`` replaces it.

    ``batch_frames``/``overlap_frames``/``vae_tile``: None picks automatically; ``vae_tile=0`` never tiles.
    """

    res_h: int = 1280
    res_w: int = 720
    scale: float | None = None
    seed: int = 666
    color_fix: str = "wavelet"
    batch_frames: int | None = None
    overlap_frames: int | None = None
    vae_tile: int | None = None
    cfg_scale: float = 1.0
    cfg_rescale: float = 0.0
    sample_steps: int = 1

    def __post_init__(self) -> None:
        if self.scale is None and (self.res_h < 1 or self.res_w < 1):
            raise ValueError(f"res_h and res_w must be positive, got {self.res_h}x{self.res_w}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.batch_frames is not None:
            check_window(self.batch_frames, self.overlap_frames or 0)
        elif self.overlap_frames is not None and self.overlap_frames >= MIN_WINDOW:
            raise ValueError(
                f"overlap_frames must be below {MIN_WINDOW} without batch_frames (the automatic window can be as "
                f"small as {MIN_WINDOW} frames), got {self.overlap_frames}: give batch_frames too"
            )
        if self.overlap_frames is not None and self.overlap_frames < 0:
            raise ValueError(f"overlap_frames must be >= 0, got {self.overlap_frames}")
        if self.vae_tile:
            Tiling.for_tile(self.vae_tile)
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")


@dataclass(frozen=True)
class Progress:
    """A progress event: ``stage`` of window ``window`` of ``windows`` (1-based), frames written so far."""

    stage: str
    window: int
    windows: int
    frames_done: int
    frames_total: int


class Cancelled(Exception):
    """Raised between windows when ``should_cancel()`` says so."""


@dataclass
class RestoreResult:
    media_type: str
    input_size: tuple[int, int]  # (w, h)
    output_size: tuple[int, int]  # (w, h)
    frames: int
    fps: float | None
    timings: dict[str, float]
    path: Path


@dataclass(frozen=True)
class Plan:
    """Geometry, windows and tiling of one restoration, decided before any model call."""

    input_size: tuple[int, int]  # (h, w)
    size: tuple[int, int]  # output (h, w), even
    pads: tuple[int, int, int, int]  # to the 16-pixel grid: left, right, top, bottom
    window: int
    overlap: int
    tiling: Tiling | None
    frames: int  # expected input frames (from the container, 0 if unknown; 1 for an image)

    @property
    def padded_size(self) -> tuple[int, int]:
        left, right, top, bottom = self.pads
        return self.size[0] + top + bottom, self.size[1] + left + right

    @property
    def windows(self) -> int:
        return len(plan_windows(max(self.frames, 1), self.window, self.overlap))


def memory_budget(device: torch.device | str) -> int:
    """Bytes a window may use: a fraction of the free CUDA memory, or a fixed CPU budget."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_FRACTION)
    return CPU_BUDGET_BYTES


def _per_pixel(constant: int, dtype: torch.dtype) -> float:
    return constant * dtype.itemsize / 2


def choose_tiling(vae_tile: int | None, padded_size: tuple[int, int], budget: int, dtype: torch.dtype) -> Tiling | None:
    """The requested tile, or (auto) tiles of 512 when one VAE chunk of the frame needs over half the budget."""
    if vae_tile is not None:
        return Tiling.for_tile(vae_tile) if vae_tile else None
    if padded_size[0] * padded_size[1] * _per_pixel(VAE_CHUNK_BYTES_PER_PIXEL, dtype) <= budget / 2:
        return None
    return Tiling.for_tile(AUTO_TILE)


def auto_window(padded_size: tuple[int, int], tiling: Tiling | None, budget: int, dtype: torch.dtype) -> int:
    """Largest 4n+1 window (5..101 frames) whose DiT activations and buffers fit beside one VAE chunk."""
    pixels = padded_size[0] * padded_size[1]
    vae_pixels = min(pixels, tiling.tile**2) if tiling else pixels
    vae_bytes = vae_pixels * _per_pixel(VAE_CHUNK_BYTES_PER_PIXEL, dtype)
    per_frame = pixels * _per_pixel(DIT_BYTES_PER_PIXEL + FRAME_BYTES_PER_PIXEL, dtype)
    frames = int((budget - vae_bytes) // per_frame)
    return min(MAX_WINDOW, max(MIN_WINDOW, floor_4n1(frames)))


def make_plan(height: int, width: int, frames: int, models: RestorationModels, options: RestoreOptions) -> Plan:
    """Output size (even, area or scale rule), grid padding, window, overlap and tiling.

    One frame (an image) is restored on its own, without temporal padding.
    """
    size = geometry.output_size(height, width, options.res_h, options.res_w, options.scale)
    pads = geometry.grid_padding(*size)
    padded = (size[0] + pads[2] + pads[3], size[1] + pads[0] + pads[1])
    budget = memory_budget(models.device)
    tiling = choose_tiling(options.vae_tile, padded, budget, models.dtype)
    if frames == 1:  # an image: one window, and temporal settings do not apply
        window, overlap = 1, 0
    else:
        window = options.batch_frames or auto_window(padded, tiling, budget, models.dtype)
        overlap = default_overlap(window) if options.overlap_frames is None else options.overlap_frames
    check_window(window, overlap)
    plan = Plan((height, width), size, pads, window, overlap, tiling, frames)
    logger.info(
        "plan: %dx%d -> %dx%d (padded %dx%d), window %d, overlap %d, tiling %s, %s %s",
        width, height, size[1], size[0], padded[1], padded[0], window, overlap, tiling, models.device, models.dtype,
    )
    return plan


@dataclass
class Stages:
    """Times named stages (synchronising CUDA so GPU work is counted) and reports progress on entry."""

    device: torch.device | str
    windows: int
    frames_total: int
    progress: Callable[[Progress], None] | None = None
    window: int = 0
    frames_done: int = 0
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def report(self, stage: str) -> None:
        if self.progress is not None:
            windows, total = max(self.windows, self.window), max(self.frames_total, self.frames_done)
            self.progress(Progress(stage, self.window, windows, self.frames_done, total))

    @contextmanager
    def __call__(self, stage: str, report: bool = True):
        if report:
            self.report(stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.device(self.device).type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[stage] += time.perf_counter() - start


def preprocess(frames: np.ndarray, plan: Plan, device: torch.device | str) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` -> ``[n, 3, H', W']`` in [-1, 1]: resize to the output size, pad to the grid.

    Frame by frame, so that the float copies of large input frames exist for one frame at a time.
    """
    resized = []
    for frame in frames:
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).unsqueeze(0)
        resized.append(geometry.resize(geometry.to_unit_float(x), plan.size))
    return geometry.to_model_range(geometry.pad_to_grid(torch.cat(resized), plan.pads))


@torch.inference_mode()
def restore_window(
    frames: np.ndarray,
    models: RestorationModels,
    options: RestoreOptions,
    plan: Plan,
    first_frame: int,
    stages: Stages,
) -> torch.Tensor:
    """One window of uint8 ``[n, H, W, 3]`` frames -> colour-fixed float ``[n, 3, h, w]`` (not clamped).

    ``first_frame`` is the window's first input frame: with ``options.seed`` it keys the window's noise.
    """
    with stages("preprocess", report=False):
        lq = preprocess(frames, plan, models.device)
    with stages("encode"):
        video = pad_to_4n1(lq).permute(1, 0, 2, 3).unsqueeze(0).to(models.dtype)
        latent_frames = (video.shape[2] - 1) // TEMPORAL_FACTOR + 1
        h, w = (s // SPATIAL_FACTOR for s in video.shape[-2:])
        shape = (1, LATENT_CHANNELS, latent_frames, h, w)
        noise = window_noise(options.seed, "posterior", first_frame, shape, models.dtype, models.device)
        cond = sampling.to_dit_latent(vae_encode(models.vae, video, noise, plan.tiling, models.map_tiles), models.scaling_factor)
    with stages("dit"):
        text_neg = None if models.text_neg_emb is None else models.text_neg_emb.to(models.device)
        x_0 = sampling.sample(
            models.dit,
            window_noise(options.seed, "x_T", first_frame, tuple(cond.shape), models.dtype, models.device),
            sampling.condition(cond),
            models.text_emb.to(models.device),
            text_neg,
            steps=options.sample_steps,
            cfg_scale=options.cfg_scale,
            cfg_rescale=options.cfg_rescale,
        )
    with stages("vae_decode"):
        z = sampling.from_dit_latent(x_0, models.scaling_factor, models.dtype)
        out = vae_decode(models.vae, z, plan.tiling, models.map_tiles)[0].permute(1, 0, 2, 3)[: len(frames)]
    with stages("postprocess", report=False):
        return color_fix(options.color_fix, geometry.unpad(out, plan.pads), geometry.unpad(lq, plan.pads))


def _timed(chunks: Iterable[np.ndarray], stages: Stages, stage: str) -> Iterator[np.ndarray]:
    """Count the time spent producing each chunk (decoding the input) as ``stage``."""
    iterator = iter(chunks)
    while True:
        with stages(stage, report=False):
            chunk = next(iterator, None)
        if chunk is None:
            return
        yield chunk


def restore_frames(
    chunks: Iterable[np.ndarray],
    models: RestorationModels,
    options: RestoreOptions,
    plan: Plan,
    stages: Stages,
    should_cancel: Callable[[], bool] | None = None,
) -> Iterator[np.ndarray]:
    """Restore a stream of uint8 ``[n, H, W, 3]`` chunks; yields uint8 ``[m, h, w, 3]`` chunks in order.

    Deterministic: each window's noise depends only on ``options.seed`` and the window's first frame.
    """
    fade = Crossfade(plan.overlap)
    for index, (start, frames) in enumerate(iter_windows(chunks, plan.window, plan.overlap), 1):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled before window {index} of {max(plan.windows, index)}")
        stages.window = index
        ready = fade.push(start, restore_window(frames, models, options, plan, start, stages))
        if len(ready):
            yield geometry.to_uint8_hwc(ready).numpy()
    rest = fade.finish()
    if rest is not None and len(rest):
        yield geometry.to_uint8_hwc(rest).numpy()


def _resolve_kind(detected: str, requested: str) -> str:
    if requested not in ("auto", "video", "image"):
        raise ValueError(f"media_type must be auto, video or image, got {requested!r}")
    if requested != "auto" and requested != detected:
        raise media.MediaError(f"media_type is {requested!r} but the input decodes as an {detected}")
    return detected


def _frame_rate(fps: float | Fraction) -> Fraction:
    """A requested rate as a small fraction (23.976 -> 2997/125, 29.97002997 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _write_image(restored: Iterator[np.ndarray], dst: Path, fmt: str, stages: Stages) -> int:
    (frame,) = list(restored)
    with stages("write"):
        media.write_image(dst, frame[0], fmt)
    stages.frames_done = 1
    return 1


def _write_video(restored: Iterator[np.ndarray], writer, stages: Stages) -> int:
    """Write restored chunks as they come; the writer's context closes the file (and muxes audio)."""
    with writer:
        for chunk in restored:
            with stages("write", report=False):
                writer.write(chunk)
            stages.frames_done += len(chunk)
            stages.report("write")
    return stages.frames_done


def _drop(restored: Iterator[np.ndarray]) -> int:
    return sum(len(chunk) for chunk in restored)


def restore_file(
    src: str | Path,
    dst: str | Path,
    models: RestorationModels,
    options: RestoreOptions,
    *,
    media_type: str = "auto",
    fps: float | Fraction | None = None,
    keep_audio: bool = True,
    output_format: str | None = None,
    crf: int = 18,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    write: bool = True,
) -> RestoreResult:
    """Restore ``src`` into ``dst`` (image in -> image out, video in -> video out with its audio).

    Streams: frames are decoded, restored and encoded window by window. On any failure (including
    :class:`Cancelled`) the partial ``dst`` is removed. ``write=False`` restores every window but
    drops the frames: the other ranks of a sequence-parallel group, whose main rank writes ``dst``.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    info = media.probe(src)
    kind = _resolve_kind(info.kind, media_type)
    plan = make_plan(info.height, info.width, 1 if kind == "image" else info.frames, models, options)
    stages = Stages(models.device, plan.windows, plan.frames, progress)
    out_fps = None if kind == "image" else _frame_rate(fps) if fps else info.fps
    try:
        if kind == "image":
            with stages("decode", report=False):
                image = media.read_image(src)[None]
            restored = restore_frames([image], models, options, plan, stages, should_cancel)
            frames = _write_image(restored, dst, output_format or "png", stages) if write else _drop(restored)
        else:
            chunks = _timed(media.iter_video(src, READ_CHUNK), stages, "decode")
            restored = restore_frames(chunks, models, options, plan, stages, should_cancel)
            if write:
                audio_from = src if keep_audio and info.has_audio else None
                writer = media.VideoWriter(
                    dst, plan.size[1], plan.size[0], out_fps, fmt=output_format or "mp4", crf=crf, audio_from=audio_from
                )
                frames = _write_video(restored, writer, stages)
            else:
                frames = _drop(restored)
    except BaseException:
        if write:
            dst.unlink(missing_ok=True)
        raise
    stages.timings["total"] = time.perf_counter() - started
    stages.report("done")
    return RestoreResult(
        media_type=kind,
        input_size=(info.width, info.height),
        output_size=(plan.size[1], plan.size[0]),
        frames=frames,
        fps=None if out_fps is None else float(out_fps),
        timings=dict(stages.timings),
        path=dst,
    )
