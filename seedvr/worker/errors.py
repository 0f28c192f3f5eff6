"""Error codes of the API contract and the one shape every failure takes.

RunPod marks a job failed when the handler's answer has an `error` key; that value must be a single string
(a list or a traceback reaches the client unreliably), so every failure goes through `error_response`.
"""

from __future__ import annotations

import enum
import logging
import re
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("seedvr.worker")

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class ErrorCode(str, enum.Enum):
    INVALID_INPUT = "INVALID_INPUT"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    UNSUPPORTED_MEDIA = "UNSUPPORTED_MEDIA"
    TOO_LARGE = "TOO_LARGE"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    GPU_OOM = "GPU_OOM"
    UPLOAD_FAILED = "UPLOAD_FAILED"
    CANCELLED = "CANCELLED"
    CONFIG_ERROR = "CONFIG_ERROR"
    INTERNAL = "INTERNAL"


class WorkerError(Exception):
    """A failure the client can act on: a code and a message that names the field or limit.

    URLs in the message are cut down to their host, as the message goes to the client and to the log.
    """

    def __init__(self, code: ErrorCode, message: str, *, refresh_worker: bool = False):
        message = redact(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.refresh_worker = refresh_worker


def redact_url(url: str) -> str:
    """`scheme://host[:port]` of a URL: user:password@, the path and the query (a presigned URL's token, a
    bot token in a path) never reach an answer or a log."""
    try:
        parsed = urlparse(url)
        host = parsed.hostname or "?"
        port = f":{parsed.port}" if parsed.port else ""
    except ValueError:  # a malformed host or port: nothing of it is worth showing
        return url.split("://", 1)[0] + "://?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parsed.scheme}://{host}{port}"


def redact(text: str) -> str:
    """`text` with every URL in it cut down to `scheme://host[:port]`."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def error_response(error: WorkerError) -> dict[str, Any]:
    response: dict[str, Any] = {"error": error.message, "error_code": error.code.value}
    if error.refresh_worker:
        # The SDK pops this key and asks RunPod to replace the worker once the answer is sent.
        response["refresh_worker"] = True
    return response


def _is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a runtime dependency
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def _is_cuda_failure(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA error" in text or "CUBLAS_STATUS" in text or "cuDNN error" in text)


def classify_failure(exc: BaseException, job_id: str) -> WorkerError:
    """Turn an unexpected exception from the model work into a client-facing error.

    After an out-of-memory or CUDA error the process' GPU state is suspect, so the worker asks to be replaced.
    """
    if isinstance(exc, WorkerError):
        return exc
    if _is_cuda_oom(exc):
        return WorkerError(
            ErrorCode.GPU_OOM,
            "Processing failed: CUDA out of memory (try a smaller res_h/res_w or batch_frames, or sp_size > 1)",
            refresh_worker=True,
        )
    log.exception("job %s failed", job_id)
    if _is_cuda_failure(exc):
        return WorkerError(ErrorCode.INTERNAL, f"Processing failed: {_first_line(exc)}", refresh_worker=True)
    # The class name says nothing to a client; the log above has it with the traceback.
    return WorkerError(ErrorCode.INTERNAL, f"Processing failed: {_first_line(exc)} (job {job_id})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "an unexpected error"
