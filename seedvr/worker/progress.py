"""Throttled RunPod progress updates, so `/status/{id}` shows where a long restore is.

`runpod.serverless.progress_update` posts from a new thread per call and races the final result, so updates are
sent at most once per interval and never after the job's answer is being built (`close`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger("seedvr.worker")

Sender = Callable[[dict, dict], None]


def default_sender() -> Sender:
    """The SDK's sender on RunPod; a log line locally, where the SDK would post to a placeholder URL."""
    if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        from runpod.serverless import progress_update

        return progress_update

    def log_progress(job: dict, update: dict) -> None:
        log.info("job %s progress: %s", job.get("id"), update)

    return log_progress


# Share of a window's work done when each stage starts, from the FLOPs of a 720p window (spec §9: VAE
# encode ~24 %, DiT ~15 %, VAE decode ~61 %). Frames are written only after a window, so without this
# a one-window clip would sit at 0 % until the very end.
STAGE_START = {"encode": 0.0, "dit": 0.24, "vae_decode": 0.39, "write": 1.0, "done": 1.0}


def window_fraction(progress: Any) -> float:
    """How far the job is by windows: finished windows plus the share of the current one."""
    if not progress.windows or not progress.window:
        return 0.0
    share = STAGE_START.get(progress.stage, 0.0)
    return min(1.0, (progress.window - 1 + share) / progress.windows)


class ProgressReporter:
    """Callable handed to the pipeline as `progress=`; turns its Progress objects into throttled updates."""

    def __init__(self, job: dict, send: Sender, interval: float, clock: Callable[[], float] = time.monotonic):
        self._job = job
        self._send = send
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last_sent: float | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __call__(self, progress: Any) -> None:
        with self._lock:
            now = self._clock()
            if self._closed or (self._last_sent is not None and now - self._last_sent < self._interval):
                return
            self._last_sent = now
        self._send(self._job, self.describe(progress, now - self._start))

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @staticmethod
    def describe(progress: Any, elapsed: float) -> dict:
        done, total = progress.frames_done, progress.frames_total
        fraction = max(done / total if total else 0.0, window_fraction(progress))
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 and elapsed > 0 else None
        return {
            "stage": progress.stage,
            "window": progress.window,
            "windows": progress.windows,
            "frames_done": done,
            "frames_total": total,
            "percent": round(100 * fraction, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
        }
