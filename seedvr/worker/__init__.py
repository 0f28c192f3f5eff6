"""The RunPod worker: the JSON contract of shared/spec/api.md on top of seedvr.manager and seedvr.pipeline.

Importing this package is cheap (no torch, no model): the worker, and with it torch and the model code, is
built on the first job, so `import handler` stays fast and side-effect free.
"""

from __future__ import annotations

import threading
from typing import Any

from .errors import ErrorCode, WorkerError, error_response

_worker = None
_worker_lock = threading.Lock()


def get_worker():
    """The process' one Worker, configured from the environment on first use."""
    global _worker
    with _worker_lock:
        if _worker is None:
            from .service import Worker

            _worker = Worker.from_env()
        return _worker


def prepare() -> None:
    """Worker start-up (handler.py): read the environment, import the model code, fetch missing weights.

    A bad setting or a failed download stops the worker here, before it takes a job.
    """
    get_worker().manager.download_missing()


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod handler: `runpod.serverless.start({"handler": handler})`."""
    try:
        worker = get_worker()
    except Exception as exc:  # noqa: BLE001 - a misconfigured endpoint must still answer in the contract's shape
        return error_response(WorkerError(ErrorCode.INTERNAL, f"Worker misconfigured: {exc}"))
    return await worker.handle(job)


__all__ = ["get_worker", "handler", "prepare"]
