"""The web app: the static page plus a small JSON API over JobStore.

The browser never sees the backend's address or key. It gets a session cookie (HttpOnly, SameSite=Strict) on
its first request, and every job is looked up by its unguessable id *and* that session, so one browser cannot
see another's jobs even with a leaked id.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from seedvr.worker.settings import env_number

from .jobs import Backend, JobStore, WebError

STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "seedvr_session"
SESSION_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
# Output sizes offered by the page: res_h x res_w of the API, i.e. the pixel budget of a landscape frame.
PRESETS = {"720p": (1280, 720), "1080p": (1920, 1080), "2K": (2560, 1440)}
# The restore fields of the API contract that the page may set; the worker validates their values.
OPTION_TYPES: dict[str, type] = {
    "res_h": int,
    "res_w": int,
    "scale": float,
    "seed": int,
    "color_fix": str,
    "model_type": str,
    "model_variant": str,
    "output_format": str,
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class WebSettings:
    """Limits of the web server; each has an environment variable."""

    max_upload_bytes: int
    result_ttl: float = 3600.0
    max_active_jobs: int = 2
    work_dir: Path | None = None  # None: a fresh temporary folder, removed at shutdown

    @classmethod
    def from_env(cls, backend: Backend) -> "WebSettings":
        work_dir = os.environ.get("SEEDVR_WEB_DIR")
        return cls(
            max_upload_bytes=env_number("SEEDVR_WEB_MAX_UPLOAD_BYTES", int(backend.max_input_bytes)),
            result_ttl=env_number("SEEDVR_WEB_RESULT_TTL", float(cls.result_ttl)),
            max_active_jobs=env_number("SEEDVR_WEB_MAX_ACTIVE_JOBS", int(cls.max_active_jobs)),
            work_dir=Path(work_dir) if work_dir else None,
        )


def parse_options(params: Mapping[str, str]) -> dict[str, Any]:
    """The query string of an upload as API fields; unknown names are refused, not dropped."""
    options: dict[str, Any] = {}
    for key, raw in params.items():
        if key == "name":
            continue
        kind = OPTION_TYPES.get(key)
        if kind is None:
            raise WebError(400, "INVALID_INPUT", f"unknown option {key!r} (valid: name, {', '.join(OPTION_TYPES)})")
        try:
            options[key] = kind(raw)
        except ValueError:
            raise WebError(400, "INVALID_INPUT", f"{key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    return options


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


async def receive(request: Request, target: Path, limit: int) -> int:
    """Stream the request body to `target`, stopping as soon as it passes `limit`."""
    size = 0
    with target.open("wb") as sink:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise WebError(413, "TOO_LARGE", f"the file is over this server's upload limit of {megabytes(limit)}")
            sink.write(chunk)
    if size == 0:
        raise WebError(400, "INVALID_INPUT", "the upload is empty: pick a video or an image")
    return size


def create_app(backend: Backend, settings: WebSettings, mode: str) -> FastAPI:
    """`mode` (local, server, runpod) is only shown to the page; `backend` does the work."""
    root = settings.work_dir or Path(tempfile.mkdtemp(prefix="seedvr-web-"))
    store = JobStore(backend, root, settings.result_ttl, settings.max_active_jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = asyncio.create_task(_sweep_forever(store, min(60.0, max(1.0, settings.result_ttl / 4))))
        try:
            yield
        finally:
            sweeper.cancel()
            store.close()
            if settings.work_dir is None:
                shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="SeedVR2 web", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def session_and_headers(request: Request, call_next):
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = not SESSION_PATTERN.fullmatch(session)
        if fresh:
            session = secrets.token_urlsafe(32)
        request.state.session = session
        response = await call_next(request)
        if fresh:
            response.set_cookie(
                SESSION_COOKIE, session, httponly=True, samesite="strict", secure=request.url.scheme == "https"
            )
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(WebError)
    async def web_error(request: Request, err: WebError) -> JSONResponse:
        return JSONResponse({"error": err.message, "error_code": err.code}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        where = ", ".join(str(item["loc"][-1]) for item in err.errors())
        return JSONResponse({"error": f"invalid request: {where}", "error_code": "INVALID_INPUT"}, status_code=400)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        return {
            "mode": mode,
            "backend": backend.label,
            "reports_progress": backend.reports_progress,
            "can_cancel": backend.can_cancel,
            "max_upload_bytes": settings.max_upload_bytes,
            "result_ttl_seconds": settings.result_ttl,
            "max_active_jobs": settings.max_active_jobs,
            "presets": PRESETS,
        }

    @app.post("/api/jobs", status_code=202)
    async def create_job(request: Request) -> dict[str, Any]:
        options = parse_options(request.query_params)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise WebError(
                413,
                "TOO_LARGE",
                f"the file is {megabytes(int(declared))}, over this server's upload limit of "
                f"{megabytes(settings.max_upload_bytes)}",
            )
        name = Path(request.query_params.get("name") or "upload").name[:200]
        job = store.create(request.state.session, name, options)
        upload = job.folder / "input"
        try:
            await receive(request, upload, settings.max_upload_bytes)
        except BaseException:
            store.remove(job)
            raise
        store.start(job, upload)
        return job.view(store.clock(), store.ttl)

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str, request: Request) -> dict[str, Any]:
        return store.get(request.state.session, job_id).view(store.clock(), store.ttl)

    @app.get("/api/jobs/{job_id}/result")
    def job_result(job_id: str, request: Request, download: bool = False) -> FileResponse:
        job = store.get(request.state.session, job_id)
        if job.result is None or not job.result.is_file():
            raise WebError(409, "NOT_READY", f"the job is {job.state} and has no result")
        return FileResponse(
            job.result,
            media_type=mimetypes.guess_type(job.result.name)[0] or "application/octet-stream",
            filename=job.download_name(),
            content_disposition_type="attachment" if download else "inline",
        )

    @app.delete("/api/jobs/{job_id}", status_code=204)
    def job_discard(job_id: str, request: Request) -> None:
        store.discard(request.state.session, job_id)

    return app


async def _sweep_forever(store: JobStore, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        store.sweep()
