"""User mode: restore a video or image file, window by window, streaming from file to file.

A video is first scanned at thumbnail size (exact frame count, hard cuts), then planned into balanced
windows per shot. Per temporal window: resize to the output size and pad to the 16-pixel grid, pad the frame count to
4n+1, VAE-encode (optionally tiled) with seeded noise, one DiT step, VAE-decode, crop the padding,
colour-fix against the resized input, crossfade with the previous window, quantise, write. Only about
one window of frames is in memory at any time. docs/pipeline.md explains the rules and the choices.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import geometry, sampling
from .colorfix import COLOR_FIXES, color_fix
from .faults import retry_transient
from .noise import window_noise
from .parts import WindowPart, WindowStore, file_digest, final_frames, save_parts
from .prefetch import BackgroundWriter, prefetch, to_device
from .temporal import check_window, default_overlap, detect_cuts, floor_4n1, iter_windows, pad_to_4n1, plan_windows
from .tiling import SPATIAL_FACTOR, TileMap, Tiling, in_order, vae_decode, vae_encode

if TYPE_CHECKING:  # PyAV is imported only where a file is read or written (the GPU check runs without it)
    from seedvr import media

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
# Decode the next window and encode the previous one in background threads while the models work
# (prefetch.py); False runs the stages one after the other in one thread, with the same output.
PIPELINED = True


@dataclass(frozen=True)
class WindowJob:
    """One temporal window to restore: its 1-based index, first input frame and uint8 frames."""

    index: int
    start: int
    frames: np.ndarray


WindowMap = Callable[[Iterable[WindowJob], "WindowTask"], Iterator[tuple[WindowJob, torch.Tensor]]]


def in_sequence(jobs: Iterable[WindowJob], task: WindowTask) -> Iterator[tuple[WindowJob, torch.Tensor]]:
    """The default window map: every window here, in order (a sequence-parallel group deals them to its
    ranks instead, see seedvr.parallel)."""
    for job in jobs:
        yield job, task.restore(job)


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
    map_windows: WindowMap = in_sequence  # how temporal windows are computed: here, or dealt to ranks


@dataclass
class RestoreOptions:
    """Settings of one restoration. ``res_h * res_w`` is an area (aspect kept); ``scale`` replaces it.

    ``batch_frames``/``overlap_frames``/``vae_tile``: None picks automatically; ``vae_tile=0`` never tiles.
    ``scene_cuts``: plan each shot of a video on its own (no window or crossfade crosses a hard cut).
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
    scene_cuts: bool = True

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
    window_pixels: int = 0  # padded output pixels times frames of a full window: its work, for a watchdog


class Cancelled(Exception):
    """Raised between windows when ``should_cancel()`` says so."""


class OutsidePlan(ValueError):
    """A window range that the plan of the input does not have."""


@dataclass
class RestoreResult:
    media_type: str
    input_size: tuple[int, int]  # (w, h)
    output_size: tuple[int, int]  # (w, h)
    frames: int
    fps: float | None
    timings: dict[str, float]
    path: Path
    work: dict[int, dict[str, int]] = field(default_factory=dict)  # sequence parallel: rank -> work counts
    windows: int = 1  # of the plan


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
    cuts: tuple[int, ...] = ()  # first frames of the shots after the first

    @property
    def padded_size(self) -> tuple[int, int]:
        left, right, top, bottom = self.pads
        return self.size[0] + top + bottom, self.size[1] + left + right

    @property
    def spans(self) -> list[tuple[int, int]]:
        """``(start, stop)`` input frames of every window, in order."""
        return plan_windows(max(self.frames, 1), self.window, self.overlap, self.cuts)

    @property
    def windows(self) -> int:
        return len(self.spans)

    def describe(self) -> dict:
        """What fixes the windows' outputs besides the options and the models: a resume key, a part's meta."""
        return {
            "size": list(self.size), "window": self.window, "overlap": self.overlap, "frames": self.frames,
            "vae_tile": self.tiling.tile if self.tiling else 0, "cuts": list(self.cuts), "spans": self.spans,
        }

    @property
    def window_pixels(self) -> int:
        height, width = self.padded_size
        return self.window * height * width


def memory_budget(device: torch.device | str) -> int:
    """Bytes a window may use: a fraction of the free CUDA memory, or a fixed CPU budget.

    Memory PyTorch keeps cached from an earlier job (reserved but not allocated) counts as free: the
    driver reports it as used, and the same request must get the same plan on a fresh or a used worker.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * MEMORY_FRACTION)
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


def make_plan(
    height: int, width: int, frames: int, models: RestorationModels, options: RestoreOptions, cuts: tuple[int, ...] = ()
) -> Plan:
    """Output size (even, area or scale rule), grid padding, window, overlap and tiling; ``cuts`` start shots.

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
    plan = Plan((height, width), size, pads, window, overlap, tiling, frames, tuple(cuts))
    logger.info(
        "plan: %dx%d -> %dx%d (padded %dx%d), window %d, overlap %d, %d windows, cuts %s, tiling %s, %s %s",
        width, height, size[1], size[0], padded[1], padded[0], window, overlap, plan.windows, list(cuts), tiling,
        models.device, models.dtype,
    )
    return plan


@dataclass
class Stages:
    """Times named stages (synchronising CUDA so GPU work is counted) and reports progress on entry."""

    device: torch.device | str
    windows: int
    frames_total: int
    progress: Callable[[Progress], None] | None = None
    window_pixels: int = 0
    window: int = 0
    frames_done: int = 0
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def report(self, stage: str) -> None:
        if self.progress is not None:
            windows, total = max(self.windows, self.window), max(self.frames_total, self.frames_done)
            self.progress(Progress(stage, self.window, windows, self.frames_done, total, self.window_pixels))

    @contextmanager
    def __call__(self, stage: str, report: bool = True):
        if report:
            self.report(stage)
        with self.host(stage):
            try:
                yield
            finally:
                if torch.device(self.device).type == "cuda":
                    torch.cuda.synchronize(self.device)

    @contextmanager
    def host(self, stage: str):
        """Time host-only work (decoding, encoding), which may run in a background thread: no CUDA
        synchronisation, which would wait for the models' work. Each stage is timed by one thread."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += time.perf_counter() - start


@dataclass
class WindowTask:
    """What restoring any window of one file needs besides the window itself: a window map calls
    ``restore`` for each window it computes, with other models if it likes (e.g. a rank's own).

    With a ``store`` (resume), a window found there is loaded instead of restored, and a restored one is
    saved there first; both then come as the store returns them, so a resumed run equals an uninterrupted one.
    """

    models: RestorationModels
    options: RestoreOptions
    plan: Plan
    stages: Stages
    store: WindowStore | None = None

    def restore(self, job: WindowJob, models: RestorationModels | None = None) -> torch.Tensor:
        self.stages.window = job.index
        part = self.store.get(job.index - 1) if self.store is not None else None
        if part is None:
            out = restore_window(job.frames, models or self.models, self.options, self.plan, job.start, self.stages)
            if self.store is None:
                return out
            part = WindowPart.of(job.index - 1, self.plan.spans, out)
            self.store.put(part)
        return part.frames()


def preprocess(frames: np.ndarray, plan: Plan, device: torch.device | str) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` -> ``[n, 3, H', W']`` in [-1, 1]: resize to the output size, pad to the grid.

    Frame by frame, so that the float copies of large input frames exist for one frame at a time.
    """
    resized = []
    for frame in frames:
        x = to_device(frame, device).permute(2, 0, 1).unsqueeze(0)
        resized.append(geometry.resize(geometry.to_unit_float(x), plan.size))
    return geometry.to_model_range(geometry.pad_to_grid(torch.cat(resized), plan.pads))


def to_video(lq: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Preprocessed frames ``[n, 3, H, W]`` -> the VAE's input ``[1, 3, 4m+1, H, W]`` in ``dtype``."""
    return pad_to_4n1(lq).permute(1, 0, 2, 3).unsqueeze(0).to(dtype)


def posterior_noise(
    frames: int, plan: Plan, models: RestorationModels, options: RestoreOptions, first_frame: int
) -> torch.Tensor:
    """The window's posterior noise over the whole padded frame (tiles and bands slice it)."""
    h, w = (s // SPATIAL_FACTOR for s in plan.padded_size)
    shape = (1, LATENT_CHANNELS, (frames - 1) // TEMPORAL_FACTOR + 1, h, w)
    return window_noise(options.seed, "posterior", first_frame, shape, models.dtype, models.device)


def denoise(cond: torch.Tensor, models: RestorationModels, options: RestoreOptions, first_frame: int) -> torch.Tensor:
    """The DiT's restored latent ``x_0 [T', h, w, 16]`` for the window's condition latent ``cond``."""
    text_neg = None if models.text_neg_emb is None else models.text_neg_emb.to(models.device)
    return sampling.sample(
        models.dit,
        window_noise(options.seed, "x_T", first_frame, tuple(cond.shape), models.dtype, models.device),
        sampling.condition(cond),
        models.text_emb.to(models.device),
        text_neg,
        steps=options.sample_steps,
        cfg_scale=options.cfg_scale,
        cfg_rescale=options.cfg_rescale,
    )


@retry_transient
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
        video = to_video(lq, models.dtype)
        noise = posterior_noise(video.shape[2], plan, models, options, first_frame)
        cond = sampling.to_dit_latent(vae_encode(models.vae, video, noise, plan.tiling, models.map_tiles), models.scaling_factor)
    with stages("dit"):
        x_0 = denoise(cond, models, options, first_frame)
    with stages("vae_decode"):
        z = sampling.from_dit_latent(x_0, models.scaling_factor, models.dtype)
        out = vae_decode(models.vae, z, plan.tiling, models.map_tiles)[0].permute(1, 0, 2, 3)[: len(frames)]
    with stages("postprocess", report=False):
        return color_fix(options.color_fix, geometry.unpad(out, plan.pads), geometry.unpad(lq, plan.pads))


def _timed(chunks: Iterable[np.ndarray], stages: Stages, stage: str) -> Iterator[np.ndarray]:
    """Count the time spent producing each chunk (decoding the input) as ``stage``."""
    iterator = iter(chunks)
    while True:
        with stages.host(stage):
            chunk = next(iterator, None)
        if chunk is None:
            return
        yield chunk


def _jobs(
    chunks: Iterable[np.ndarray], plan: Plan, should_cancel: Callable[[], bool] | None, only: range
) -> Iterator[WindowJob]:
    """The plan's windows in ``only`` (0-based) cut from a stream of chunks, checking for a cancel before each."""
    spans = plan.spans
    for index, (start, frames) in enumerate(iter_windows(chunks, spans)):
        if index >= only.stop:
            return
        if index < only.start:
            continue
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled before window {index + 1} of {len(spans)}")
        yield WindowJob(index + 1, start, frames)


def window_outputs(
    chunks: Iterable[np.ndarray], models: RestorationModels, options: RestoreOptions, plan: Plan, stages: Stages,
    should_cancel: Callable[[], bool] | None = None, only: range | None = None, store: WindowStore | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(index, start, colour-fixed float frames)`` of the plan's windows (those in ``only``), in order.

    ``models.map_windows`` computes them (here, or dealt to sequence-parallel ranks, whose other ranks
    yield none). With ``store`` a window found there is loaded instead of restored (:class:`WindowTask`).
    """
    task = WindowTask(models, options, plan, stages, store)
    jobs = _jobs(chunks, plan, should_cancel, only or range(plan.windows))
    for job, out in models.map_windows(jobs, task):
        yield job.index - 1, job.start, out


def restore_frames(
    chunks: Iterable[np.ndarray],
    models: RestorationModels,
    options: RestoreOptions,
    plan: Plan,
    stages: Stages,
    should_cancel: Callable[[], bool] | None = None,
    store: WindowStore | None = None,
) -> Iterator[np.ndarray]:
    """Restore a stream of uint8 ``[n, H, W, 3]`` chunks; yields uint8 ``[m, h, w, 3]`` chunks in order.

    Deterministic: each window's noise depends only on ``options.seed`` and the window's first frame, so
    ``models.map_windows`` may compute the windows anywhere; it yields them in order (a sequence-parallel
    group's other ranks yield none and restore only their own).
    """
    outputs = window_outputs(chunks, models, options, plan, stages, should_cancel, store=store)
    return final_frames(((start, out) for _, start, out in outputs), plan.overlap)


def _resolve_kind(detected: str, requested: str) -> str:
    if requested not in ("auto", "video", "image"):
        raise ValueError(f"media_type must be auto, video or image, got {requested!r}")
    if requested != "auto" and requested != detected:
        from seedvr import media  # here, not at the top: the model-level path runs without PyAV

        raise media.MediaError(f"media_type is {requested!r} but the input decodes as an {detected}")
    return detected


def frame_rate(fps: float | Fraction) -> Fraction:
    """A requested rate as a small fraction (23.976 -> 2997/125, 29.97002997 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _write_image(restored: Iterator[np.ndarray], dst: Path, fmt: str, stages: Stages) -> int:
    from seedvr import media

    (frame,) = list(restored)
    with stages("write"):
        media.write_image(dst, frame[0], fmt)
    stages.frames_done = 1
    return 1


def _write_video(restored: Iterator[np.ndarray], writer, stages: Stages) -> int:
    """Encode restored chunks as they come, behind the models (one window may wait); the writer's
    context then closes the file (and muxes audio). ``frames_done`` counts frames handed to the encoder."""

    def encode(chunk: np.ndarray) -> None:
        with stages.host("write"):
            writer.write(chunk)

    with writer, BackgroundWriter(encode, 1 if PIPELINED else 0, "seedvr-encode") as encoder:
        for chunk in restored:
            encoder.put(chunk)
            stages.frames_done += len(chunk)
            stages.report("write")
    return stages.frames_done


def _drop(restored: Iterator[np.ndarray]) -> int:
    return sum(len(chunk) for chunk in restored)


def plan_file(
    src: Path, models: RestorationModels, options: RestoreOptions, media_type: str = "auto"
) -> tuple[media.MediaInfo, str, Plan]:
    """``(info, kind, plan)`` of a file. A video is scanned once at thumbnail size first: that counts its
    frames exactly and finds its hard cuts (``options.scene_cuts``) before any window is planned."""
    from seedvr import media

    info = media.probe(src)
    kind = _resolve_kind(info.kind, media_type)
    if kind == "image":
        return info, kind, make_plan(info.height, info.width, 1, models, options)
    cuts, frames = detect_cuts(media.iter_thumbnails(src))
    cuts = tuple(cuts) if options.scene_cuts else ()
    return info, kind, make_plan(info.height, info.width, frames, models, options, cuts)


def _write_parts(
    outputs: Iterator[tuple[int, int, torch.Tensor]], dst: Path, plan: Plan, only: range, stages: Stages
) -> int:
    """Save windows ``only`` as one part file (docs/API.md); returns the frames they cover."""
    spans = plan.spans
    first = spans[only.start][0]

    def parts() -> Iterator[WindowPart]:
        for index, _, out in outputs:
            yield WindowPart.of(index, spans, out)
            stages.frames_done = spans[index][1] - first
            stages.report("write")

    with stages("write", report=False):
        save_parts(dst, parts(), {"plan": plan.describe(), "range": [only.start, only.stop]})
    return spans[only.stop - 1][1] - first


def _window_range(windows: tuple[int, int], plan: Plan) -> range:
    first, stop = windows
    if not 0 <= first < stop <= plan.windows:
        raise OutsidePlan(
            f"windows must be [first, stop] with 0 <= first < stop <= {plan.windows} (the plan's windows), "
            f"got [{first}, {stop}]"
        )
    return range(first, stop)


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
    windows: tuple[int, int] | None = None,
    store: WindowStore | None = None,
) -> RestoreResult:
    """Restore ``src`` into ``dst`` (image in -> image out, video in -> video out with its audio).

    Streams: frames are decoded, restored and encoded window by window. On any failure (including
    :class:`Cancelled`) the partial ``dst`` is removed. ``write=False`` restores every window but
    drops the frames: the other ranks of a sequence-parallel group, whose main rank writes ``dst``.
    ``windows=(first, stop)`` restores only those windows of the plan and writes them to ``dst`` as a
    part file (:mod:`.parts`) for a client to stitch. ``store`` keeps every finished window (resume).
    """
    from seedvr import media

    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    info, kind, plan = plan_file(src, models, options, media_type)
    only = _window_range(windows, plan) if windows is not None else None
    if store is not None:
        store.bind({"input_sha256": file_digest(src), "options": dataclasses.asdict(options), "plan": plan.describe()})
    frames_total = plan.frames if only is None else plan.spans[only.stop - 1][1] - plan.spans[only.start][0]
    stages = Stages(models.device, plan.windows, frames_total, progress, plan.window_pixels)
    stages.timings["scan"] = time.perf_counter() - started
    out_fps = None if kind == "image" else frame_rate(fps) if fps else info.fps
    try:
        if kind == "image":
            with stages("decode", report=False):
                image = media.read_image(src)[None]
            restored = restore_frames([image], models, options, plan, stages, should_cancel)
            frames = _write_image(restored, dst, output_format or "png", stages) if write else _drop(restored)
        elif only is not None:
            chunks = _timed(media.iter_video(src, READ_CHUNK), stages, "decode")
            outputs = window_outputs(chunks, models, options, plan, stages, should_cancel, only=only)
            if write:
                frames = _write_parts(outputs, dst, plan, only, stages)
            else:
                frames = frames_total
                deque(outputs, maxlen=0)  # restore the windows; the main rank writes them
        else:
            ahead = -(-plan.window // READ_CHUNK) if PIPELINED else 0  # chunks of one window
            decoded = _timed(media.iter_video(src, READ_CHUNK), stages, "decode")
            with prefetch(decoded, ahead, "seedvr-decode") as chunks:
                restored = restore_frames(chunks, models, options, plan, stages, should_cancel, store)
                if write:
                    audio_from = src if keep_audio and info.has_audio else None
                    writer = media.VideoWriter(
                        dst, plan.size[1], plan.size[0], out_fps, fmt=output_format or "mp4", crf=crf,
                        audio_from=audio_from,
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
        windows=plan.windows,
    )
