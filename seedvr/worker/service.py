"""The worker: one RunPod job in, one JSON answer out (shared/spec/api.md).

The handler is async so that RunPod's per-job stop and timeouts reach it; the model work runs in a thread
(the event loop must stay free for the SDK) and checks a cancel flag between temporal windows. One lock keeps
GPU work to one job at a time, including a cancelled job's thread that is still winding down. With
`sp_size > 1` the model lives in resident rank processes (`ranks.RankGroup`) and this process holds none.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import re
import shutil
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

import seedvr
from seedvr.checkpoints import CheckpointError
from seedvr.manager import ManagerConfig, ModelManager, ModelNotReady, ModelSpec
from seedvr.media import MediaError, MediaInfo, MediaTooLarge, probe
from seedvr.models.compiled import compile_regions
from seedvr.pipeline import (
    Cancelled, OutsidePlan, RestorationModels, RestoreOptions, RestoreResult, make_plan, restore_file, restore_frames,
)
from seedvr.pipeline.restore import Stages, frame_rate, plan_file
from seedvr.pipeline.geometry import output_size

from . import media_in, media_out
from .errors import ErrorCode, WorkerError, classify_failure, error_response
from .progress import ProgressReporter, Sender, default_sender
from .ranks import GroupConfig, RankFailure, RankGroup
from .schema import (
    FORMATS_BY_KIND,
    HealthRequest,
    InitializeRequest,
    PlanRequest,
    RestoreRequest,
    parse_request,
)
from .settings import BucketConfig, SettingsError, WorkerSettings, compile_requested
from .watchdog import Stalled, Watchdog, run_watched
from .weights import Weights

log = logging.getLogger("seedvr.worker")

DEFAULT_FORMATS = {"video": "mp4", "image": "png"}
A_KIND = {"video": "a video", "image": "an image"}


def gpu_info() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"cuda_available": False, "gpu_name": None, "gpu_memory": 0, "gpu_memory_free": 0}
    free, total = torch.cuda.mem_get_info(0)
    return {
        "cuda_available": True,
        "gpu_name": torch.cuda.get_device_name(0),
        "gpu_memory": int(total),
        "gpu_memory_free": int(free),
    }


def _seconds(start: float) -> float:
    return round(time.perf_counter() - start, 3)


class Worker:
    def __init__(self, manager: ModelManager, settings: WorkerSettings, sender: Sender | None = None):
        self.manager = manager
        self.settings = settings
        self.sender = sender or default_sender()
        self._gpu = threading.Lock()
        self.group: RankGroup | None = None  # the resident model when sp_size > 1
        self.weights = Weights(manager)
        self._stuck: threading.Thread | None = None  # a stalled job's thread that never returned

    @classmethod
    def from_env(cls) -> "Worker":
        """Every setting is read and checked here, once; a bad one raises SettingsError naming it."""
        try:
            config, settings = ManagerConfig.from_env(), WorkerSettings.from_env()
        except ValueError as err:
            raise SettingsError(str(err)) from None
        return cls(ModelManager(config), settings)

    # ------------------------------------------------------------------ entry points

    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """The RunPod handler. A cancel (RunPod stop signal or timeout) sets the flag the pipeline polls."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.run, job, cancel)
        except asyncio.CancelledError:
            cancel.set()
            log.warning("job %s cancelled: stopping at the next window", job.get("id"))
            raise

    def run(self, job: dict[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        """Answer one job; every failure becomes {"error", "error_code"} and the worker keeps serving."""
        job_id = str(job.get("id", "local"))
        cancel = cancel or threading.Event()
        try:
            request = parse_request(job.get("input"))
            if isinstance(request, HealthRequest):
                return self.health()
            self.weights.wait(
                self.settings.weights_wait,
                partial(self.sender, job),
                self.settings.progress_interval,
                cancel.is_set,
            )
            with self._gpu:
                if isinstance(request, InitializeRequest):
                    return self.initialize(request)
                if isinstance(request, PlanRequest):
                    return self.plan(request)
                return self._restore_watched(job, request, cancel)
        except Exception as exc:  # noqa: BLE001 - the contract: one string error, never a traceback
            error = classify_failure(_known_failure(exc), job_id)
        # out of the except block, the failure's traceback (and the tensors its frames hold) is gone
        if error.refresh_worker or error.code is ErrorCode.CANCELLED:
            self._release_gpu_memory()
        log.info("job %s failed: %s %s", job_id, error.code.value, error.message)
        return error_response(error)

    # ------------------------------------------------------------------ actions

    @property
    def resident(self) -> ModelSpec | None:
        """The model loaded here, or by the rank group (kept after a rank failure: the next job rebuilds it)."""
        group = self.group  # read once: health runs beside a job that may swap it
        return group.spec if group is not None else self.manager.resident

    def health(self) -> dict[str, Any]:
        """Never loads a model and never fails on missing weights: it reports what is there."""
        group, resident = self.group, self.resident
        loaded = group.running if group is not None else self.manager.models is not None
        return {
            "status": "healthy",
            "model_initialized": loaded,
            "model_type": resident.model_type if resident else None,
            # before any load: what a restore without model fields would use (the contract's defaults)
            "model_variant": resident.variant if resident else self.manager.config.default_variant,
            "sp_size": resident.sp_size if resident else 1,
            **gpu_info(),
            "checkpoints": self.manager.checkpoint_status(),
            "weights": self.weights.describe(),
            "version": seedvr.__version__,
        }

    def initialize(self, request: InitializeRequest) -> dict[str, Any]:
        model_type = request.model_type or self.manager.config.default_model
        spec = self._spec(
            model_type, request.model_variant or self.manager.default_variant(model_type), request.sp_size or 1
        )
        seconds = self._ensure(spec)
        if spec.sp_size == 1 and compile_requested():
            seconds += self._compile_resident()
        return {
            "message": f"Model {spec.model_type} ({spec.variant}) initialized successfully",
            "model_type": spec.model_type,
            "model_variant": spec.variant,
            "sp_size": spec.sp_size,
            "ready": True,
            "load_seconds": round(seconds, 3),
        }

    def _restore_watched(self, job: dict[str, Any], request: RestoreRequest, cancel: threading.Event) -> dict[str, Any]:
        """`restore` in a thread of its own, under the watchdog (watchdog.py). A stall kills the ranks and
        ends the job with refresh_worker; while its thread is stuck, this worker takes no other job."""
        if self._stuck is not None and self._stuck.is_alive():
            raise WorkerError(
                ErrorCode.INTERNAL, "A stalled job still holds this worker; it is being replaced", refresh_worker=True
            )
        settings = self.settings
        watchdog = Watchdog(settings.watchdog_margin, settings.watchdog_min_seconds, self.manager.device.type)

        def stop() -> None:
            cancel.set()
            group, self.group = self.group, None
            if group is not None:
                group.stop(graceful=False)

        try:
            return run_watched(partial(self.restore, job, request, cancel, watchdog), watchdog, stop)
        except Stalled as stall:
            self._stuck = stall.thread if stall.thread.is_alive() else None
            log.error("job %s: %s", job.get("id"), stall.message)
            raise WorkerError(ErrorCode.INTERNAL, stall.message, refresh_worker=True) from None

    def restore(
        self, job: dict[str, Any], request: RestoreRequest, cancel: threading.Event, watchdog: Watchdog
    ) -> dict[str, Any]:
        start = time.perf_counter()
        options = self._options(request)
        spec = self._restore_spec(request)
        self.manager.check_files(spec)
        bucket = self._bucket(job)
        problem = media_out.bucket_problem(bucket)
        if request.output_mode == "upload" and problem:
            raise WorkerError(ErrorCode.INVALID_INPUT, f"output_mode upload needs a bucket: {problem}")
        if request.output_mode != "inline" and bucket is not None and not problem:
            self._check_bucket(bucket, needed=request.output_mode == "upload" or bucket is not self.settings.bucket)
        workdir = Path(tempfile.mkdtemp(prefix=f"seedvr-{_safe_name(job.get('id', 'local'))}-"))
        progress = ProgressReporter(job, self.sender, self.settings.progress_interval)
        try:
            step = time.perf_counter()
            source = self._fetch(request, workdir)
            info = self._check_input(source, request)
            timings = {"fetch": _seconds(step)}
            step = time.perf_counter()
            if self._ensure(spec):
                timings["load_model"] = _seconds(step)
            fmt = "npz" if request.windows else request.output_format or DEFAULT_FORMATS[info.kind]
            part = {"windows": tuple(request.windows)} if request.windows else {}
            run = partial(restore_file, models=self.manager.models) if self.group is None else self.group.restore
            result = run(
                source,
                workdir / f"restored.{fmt}",
                options=options,
                media_type=info.kind,
                fps=request.fps,
                keep_audio=request.keep_audio,
                output_format=fmt,
                crf=request.crf,
                progress=watchdog.arm(progress),
                should_cancel=cancel.is_set,
                **part,
            )
            watchdog.disarm()
            progress.close()
            answer = self._answer(request, spec, result, timings)
            if request.windows:
                answer["part"] = {"windows": request.windows, "frames": result.frames, "format": "npz"}
            step = time.perf_counter()
            answer = media_out.deliver(
                answer,
                Path(result.path),
                request.output_mode,
                self.settings.limits.inline_max_bytes,
                bucket,
                key=f"{_safe_name(job.get('id', 'local'))}/{Path(result.path).name}",
                url_expiry=self.settings.url_expiry_seconds,
            )
            # A few bytes more than deliver() measured; its estimate leaves that margin.
            answer["processing_info"]["timings"].update(deliver=_seconds(step), total=_seconds(start))
            return answer
        finally:
            progress.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def plan(self, request: PlanRequest) -> dict[str, Any]:
        """The window plan of the input for these settings (docs/API.md, "plan"); restores nothing.

        The model is made resident first: the automatic window and tile depend on the memory it leaves.
        """
        options = self._options(request)
        spec = self._restore_spec(request)
        self.manager.check_files(spec)
        workdir = Path(tempfile.mkdtemp(prefix="seedvr-plan-"))
        try:
            source = self._fetch(request, workdir)
            info = self._check_input(source, request)
            self._ensure(spec)
            budget_of = RestorationModels(None, None, None, device=self.manager.device, dtype=self.manager.dtype)
            info, kind, plan = plan_file(source, budget_of, options, info.kind)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rate = None if kind == "image" else frame_rate(request.fps) if request.fps else info.fps
        return {
            "media_type": kind,
            "frames": max(plan.frames, 1),
            "fps": None if rate is None else round(float(rate), 3),
            "frame_rate": None if rate is None else f"{rate.numerator}/{rate.denominator}",
            "has_audio": info.has_audio,
            "input_resolution": f"{info.width}x{info.height}",
            "resolution": f"{plan.size[1]}x{plan.size[0]}",
            "batch_frames": plan.window,
            "overlap_frames": plan.overlap,
            "vae_tile": plan.tiling.tile if plan.tiling else 0,
            "scene_cuts": list(plan.cuts),
            "windows": [list(span) for span in plan.spans],
        }

    # ------------------------------------------------------------------ steps of restore

    def _ensure(self, spec: ModelSpec) -> float:
        """Make `spec` resident: in this process for sp_size 1, else in a rank group (this process then
        frees its model, since rank 0 takes the first GPU). Returns the seconds spent loading."""
        if spec.sp_size == 1:
            self.stop_ranks()
            return self.manager.ensure(spec)
        if self.group is not None and self.group.spec == spec and self.group.running:
            return 0.0
        self.manager.check_files(spec)
        self.stop_ranks()
        self.manager.unload()
        config = GroupConfig(self.manager.config, spec, self.manager.device.type, self.manager.dtype)
        self.group = RankGroup(config)
        try:
            return self.group.start()
        except BaseException:
            self.group.stop(graceful=False)
            self.group = None
            raise

    def _compile_resident(self) -> float:
        """Compile the resident model's blocks once and warm them up on a small clip; returns the seconds.

        Compiled graphs are shape-generic (dynamic), so the warm-up's size need not match the jobs'; its 9
        frames make the VAE stream in chunks as well as run whole, the two cache states of its graphs.
        """
        models = self.manager.models
        if getattr(models.dit, "seedvr_compiled", False):
            return 0.0
        start = time.perf_counter()
        compile_regions(models.dit, models.vae)
        options = RestoreOptions(res_h=128, res_w=192, batch_frames=9, vae_tile=0)
        plan = make_plan(96, 160, 9, models, options)
        frames = np.random.default_rng(0).integers(0, 256, (9, 96, 160, 3), dtype=np.uint8)
        for _ in restore_frames([frames], models, options, plan, Stages(models.device, plan.windows, plan.frames)):
            pass
        models.dit.seedvr_compiled = True
        seconds = time.perf_counter() - start
        log.info("SEEDVR_COMPILE: DiT and VAE blocks compiled and warmed up in %.1f s", seconds)
        return seconds

    def stop_ranks(self) -> None:
        """End the sequence-parallel rank processes, if any (their model goes with them)."""
        if self.group is not None:
            self.group.stop()
            self.group = None

    def _sp_max(self) -> tuple[int, str]:
        """How many ranks this machine can run: one per GPU; on the CPU SEEDVR_CPU_SP_MAX (default 1)."""
        if self.manager.device.type == "cuda":
            return max(1, torch.cuda.device_count()), "the number of GPUs"
        return self.settings.cpu_sp_max, "SEEDVR_CPU_SP_MAX on a CPU worker"

    def _spec(self, model_type: str, variant: str, sp_size: int) -> ModelSpec:
        variants = self.manager.variants(model_type)
        if variant not in variants:
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                f"model_variant {variant} does not exist for {model_type} (it has: {', '.join(variants)})",
            )
        limit, reason = self._sp_max()
        if sp_size > limit:
            raise WorkerError(ErrorCode.INVALID_INPUT, f"sp_size must be an integer between 1 and {limit} ({reason})")
        return ModelSpec(model_type, variant, sp_size)

    def _restore_spec(self, request: RestoreRequest) -> ModelSpec:
        """Fields left out mean "the resident model", so a restore never swaps unless asked to."""
        resident = self.resident
        model_type = request.model_type or (resident.model_type if resident else self.manager.config.default_model)
        same_model = resident is not None and resident.model_type == model_type
        variant = request.model_variant or (
            resident.variant if same_model else self.manager.default_variant(model_type)
        )
        sp_size = request.sp_size or (resident.sp_size if resident else 1)
        return self._spec(model_type, variant, sp_size)

    def _bucket(self, job: dict[str, Any]) -> BucketConfig | None:
        s3_config = job.get("s3Config")
        if isinstance(s3_config, dict) and s3_config:
            return BucketConfig.from_job(s3_config)
        return self.settings.bucket

    def _check_bucket(self, bucket: BucketConfig, needed: bool) -> None:
        """A bucket that would refuse the output refuses the job now, before any work, when the job surely
        uploads or the client sent the bucket itself (s3Config). The endpoint's own bucket in auto mode only
        warns: outputs small enough to return inline still succeed while the operator fixes it."""
        try:
            media_out.check_bucket(bucket)
        except WorkerError as err:
            if needed:
                raise
            log.warning("the endpoint's bucket is unusable; outputs too large to return inline will fail: %s", err)

    def _fetch(self, request: RestoreRequest, workdir: Path) -> Path:
        limits = self.settings.limits
        field = request.media_field
        if field == "media_url":
            return media_in.download(
                request.media_url,
                workdir / "input",
                limits.max_input_bytes,
                limits.download_timeout,
                self.settings.allow_private_urls,
            )
        return media_in.write_base64(getattr(request, field), field, workdir / "input", limits.max_input_bytes)

    def _check_input(self, source: Path, request: RestoreRequest) -> MediaInfo:
        """Everything that can be refused from the file's header is refused here, before the model runs."""
        limits = self.settings.limits
        try:
            info = probe(source, max_pixels=limits.max_input_pixels)
        except MediaTooLarge as err:
            raise WorkerError(
                ErrorCode.TOO_LARGE,
                f"input is {err.width}x{err.height} = {err.width * err.height:,} pixels per frame, "
                f"over MAX_INPUT_PIXELS={err.limit:,}",
            ) from None
        except MediaError as err:
            raise WorkerError(ErrorCode.UNSUPPORTED_MEDIA, f"Unsupported media: {err}") from None
        if request.media_type != "auto" and info.kind != request.media_type:
            raise WorkerError(
                ErrorCode.UNSUPPORTED_MEDIA, f"media_type is {request.media_type} but the input is {A_KIND[info.kind]}"
            )
        if info.frames > limits.max_frames:
            raise WorkerError(
                ErrorCode.TOO_LARGE, f"input has {info.frames:,} frames, over MAX_FRAMES={limits.max_frames:,}"
            )
        height, width = output_size(info.height, info.width, request.res_h, request.res_w, request.scale)
        if height * width > limits.max_output_pixels:
            raise WorkerError(
                ErrorCode.TOO_LARGE,
                f"output would be {width}x{height} = {height * width:,} pixels per frame, "
                f"over MAX_OUTPUT_PIXELS={limits.max_output_pixels:,}",
            )
        if max(height, width) > limits.max_output_side:
            raise WorkerError(
                ErrorCode.TOO_LARGE,
                f"output would be {width}x{height} (the input's {info.width}x{info.height} aspect ratio), "
                f"a side over MAX_OUTPUT_SIDE={limits.max_output_side:,}",
            )
        allowed = FORMATS_BY_KIND[info.kind]
        if request.output_format is not None and request.output_format not in allowed:
            raise WorkerError(
                ErrorCode.INVALID_INPUT,
                f"output_format {request.output_format} does not fit {A_KIND[info.kind]}: "
                f"use one of {', '.join(allowed)}",
            )
        return info

    @staticmethod
    def _options(request: RestoreRequest) -> RestoreOptions:
        """The pipeline's own checks of its settings, run before any transfer or model work."""
        try:
            return RestoreOptions(
                res_h=request.res_h,
                res_w=request.res_w,
                scale=request.scale,
                seed=request.seed,
                color_fix=request.color_fix,
                batch_frames=request.batch_frames,
                overlap_frames=request.overlap_frames,
                cfg_scale=request.cfg_scale,
                cfg_rescale=request.cfg_rescale,
                sample_steps=request.sample_steps,
                scene_cuts=request.scene_cuts,
                vae_tile=request.vae_tile,
            )
        except ValueError as err:
            raise WorkerError(ErrorCode.INVALID_INPUT, str(err)) from None

    @staticmethod
    def _answer(
        request: RestoreRequest, spec: ModelSpec, result: RestoreResult, timings: dict[str, float]
    ) -> dict[str, Any]:
        out_w, out_h = result.output_size
        in_w, in_h = result.input_size
        return {
            "success": True,
            "media_type": result.media_type,
            "model_type": spec.model_type,
            "model_variant": spec.variant,
            "resolution": f"{out_w}x{out_h}",
            "processing_info": {
                "seed": request.seed,
                "cfg_scale": request.cfg_scale,
                "sample_steps": request.sample_steps,
                "sequence_parallel_size": spec.sp_size,
                "input_resolution": f"{in_w}x{in_h}",
                "frames": result.frames,
                "fps": None if result.fps is None else round(float(result.fps), 3),
                "color_fix": request.color_fix,
                "timings": {**timings, **{k: round(v, 3) for k, v in result.timings.items()}},
            },
        }

    def _release_gpu_memory(self) -> None:
        """After OOM, a CUDA error or a cancel: hand the job's cached activations back (the model stays)."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _known_failure(exc: Exception) -> Exception:
    """Map the lower floors' exceptions onto the contract's codes; others stay as they are."""
    if _disk_full(exc):  # the worker's fault, not the media's; the message must not show the job's paths
        return WorkerError(ErrorCode.INTERNAL, "Processing failed: no space left on the worker's disk")
    if isinstance(exc, ModelNotReady):
        return WorkerError(ErrorCode.MODEL_NOT_READY, str(exc))
    if isinstance(exc, OutsidePlan):
        return WorkerError(ErrorCode.INVALID_INPUT, str(exc))
    if isinstance(exc, Cancelled):
        return WorkerError(ErrorCode.CANCELLED, "Job cancelled: stopped before the next temporal window")
    if isinstance(exc, MediaError):
        return WorkerError(ErrorCode.UNSUPPORTED_MEDIA, f"Unsupported media: {exc}")
    if isinstance(exc, CheckpointError):
        return WorkerError(ErrorCode.MODEL_NOT_READY, f"Model not initialized: {exc}")
    if isinstance(exc, RankFailure):
        return WorkerError(ErrorCode.INTERNAL, f"Processing failed: {exc}")
    return exc


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain (media code wraps OSErrors in MediaError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__
    return False


def _safe_name(job_id: Any) -> str:
    """A job id as one harmless path component and bucket key segment: no separators, no dots (no `..`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(job_id))[:80] or "job"
