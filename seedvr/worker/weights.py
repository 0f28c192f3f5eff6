"""Weights fetched in the background at start, so the worker answers health while a download runs.

RunPod counts a worker that has not called `serverless.start` within its init timeout as failed, and a 14.6 GB
download can take longer; so the download runs in a thread and jobs that need the model wait for it (with
progress, up to SEEDVR_WEIGHTS_WAIT seconds), while `health` answers at once and says what is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from seedvr.checkpoints import PARTIAL_DIR
from seedvr.manager import ModelManager

from .errors import ErrorCode, WorkerError

log = logging.getLogger("seedvr.worker")


class Weights:
    """The start-up download of SEEDVR_DOWNLOAD_MODELS: `ready` (nothing to fetch, or done), `downloading`,
    or `failed` (the error is kept and answered to jobs; the worker stays up)."""

    def __init__(self, manager: ModelManager, clock: Callable[[], float] = time.monotonic):
        self.manager = manager
        self.state = "ready"
        self.error: str | None = None
        self._done = threading.Event()
        self._done.set()
        self._clock = clock

    def start(self) -> None:
        """Begin fetching what SEEDVR_DOWNLOAD_MODELS names and no folder holds; returns at once."""
        if not self.manager.missing_downloads():
            return
        self.state = "downloading"
        self._done.clear()
        threading.Thread(target=self._download, name="seedvr-weights", daemon=True).start()

    def _download(self) -> None:
        try:
            self.manager.download_missing()
            self.state = "ready"
        except Exception as err:  # noqa: BLE001 - reported to every job and in health, never a crash loop
            self.error = f"{type(err).__name__}: {err}"
            self.state = "failed"
            log.error("weights: the start-up download failed: %s", self.error)
        finally:
            self._done.set()

    def describe(self) -> dict:
        """What health reports: the state, what is still missing, how far the download is, where files are read."""
        missing = self.manager.missing_downloads() if self.state != "ready" else []
        partial = self.manager.config.ckpt_dir / PARTIAL_DIR
        fetched = sum(p.stat().st_size for p in partial.glob("*.part")) if partial.is_dir() else 0
        return {
            "state": self.state,
            "waiting_for": missing,
            "downloaded_bytes": fetched if missing else 0,
            "folders": [str(folder) for folder in self.manager.folders],
            "error": self.error,
        }

    def wait(self, limit: float, report: Callable[[dict], None], interval: float, cancelled: Callable[[], bool]) -> None:
        """Block a job until the download ends, reporting progress every `interval` s; refuse it after `limit` s."""
        start = self._clock()
        while not self._done.wait(min(interval, max(0.0, start + limit - self._clock()))):
            waited = self._clock() - start
            if cancelled():
                raise WorkerError(ErrorCode.CANCELLED, "Job cancelled while waiting for the model weights")
            if waited >= limit:
                status = self.describe()
                raise WorkerError(
                    ErrorCode.MODEL_NOT_READY,
                    f"Model not ready: still downloading {', '.join(status['waiting_for'])} "
                    f"({status['downloaded_bytes'] / 1e9:.1f} GB so far) after waiting {limit:g} s "
                    "(SEEDVR_WEIGHTS_WAIT); try again later",
                )
            report({"stage": "waiting_for_weights", "waited_seconds": round(waited, 1), **self.describe()})
        if self.state == "failed":
            raise WorkerError(ErrorCode.MODEL_NOT_READY, f"Model not ready: the download at start failed: {self.error}")
