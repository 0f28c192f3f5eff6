"""A web page for restoring a video or an image by clicking: `python -m seedvr.web` (see docs/web.md).

The page talks to the worker only through the API contract (shared/spec/api.md), whether the worker is a
RunPod endpoint, the RunPod local server or the worker's job runner in this process.
"""

from .app import WebSettings, create_app
from .jobs import HttpBackend, InProcessBackend, JobStore, WebError, local_server, runpod_endpoint

__all__ = [
    "HttpBackend",
    "InProcessBackend",
    "JobStore",
    "WebError",
    "WebSettings",
    "create_app",
    "local_server",
    "runpod_endpoint",
]
