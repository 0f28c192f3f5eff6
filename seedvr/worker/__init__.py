"""The RunPod worker: the JSON contract of shared/spec/api.md on top of seedvr.manager and seedvr.pipeline.

Importing this package is cheap (no torch, no model): the worker, and with it torch and the model code, is
built by `prepare()` at start or on the first job, so `import handler` stays fast and side-effect free.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .errors import ErrorCode, WorkerError, error_response
from .settings import SettingsError

log = logging.getLogger("seedvr.worker")

_worker = None
_settings_error: SettingsError | None = None
_worker_lock = threading.Lock()


def get_worker():
    """The process' one Worker, configured from the environment on first use; a bad setting raises
    SettingsError, then and on every later call (the environment is read once)."""
    global _worker, _settings_error
    with _worker_lock:
        if _worker is None and _settings_error is None:
            from .service import Worker

            try:
                _worker = Worker.from_env()
            except SettingsError as err:
                _settings_error = err
                log.error("configuration error: %s (every job is answered with it until the endpoint is fixed)", err)
        if _settings_error is not None:
            raise _settings_error
        return _worker


def prepare() -> None:
    """Worker start-up (handler.py): read and check every setting, import the model code, and start fetching
    missing weights in the background. Nothing here stops the process: a bad setting or a failed download is
    answered to jobs and in health, since a worker that exits is restarted by RunPod in a billed loop."""
    try:
        worker = get_worker()
    except SettingsError:
        return
    worker.weights.start()


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod handler: `runpod.serverless.start({"handler": handler})`."""
    try:
        worker = get_worker()
    except SettingsError as exc:
        return error_response(WorkerError(ErrorCode.CONFIG_ERROR, f"Worker misconfigured: {exc}"))
    return await worker.handle(job)


__all__ = ["get_worker", "handler", "prepare"]
