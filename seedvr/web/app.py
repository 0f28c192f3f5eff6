"""The web app: the static page plus a small JSON API over JobStore.

The browser never sees the backend's address or key. It gets a session cookie (HttpOnly, SameSite=Strict) on
its first request, and every job is looked up by its unguessable id *and* that session, so one browser cannot
see another's jobs even with a leaked id. With an access token (required beyond loopback), the page and the API
answer only a browser that opened `/?token=...` once (kept in a cookie) or a client sending it as a Bearer
token; every client address may start a limited number of jobs per minute.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from seedvr.worker.settings import env_number

from .jobs import Backend, JobStore, WebError

STATIC = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "seedvr_session"
ACCESS_COOKIE = "seedvr_access"
MIN_TOKEN_LENGTH = 16
RATE_WINDOW = 60.0  # seconds over which SEEDVR_WEB_RATE_LIMIT counts a client's jobs
REFUSED_PAGE = """<!doctype html><meta charset="utf-8"><title>SeedVR2: access token needed</title>
<p>This page needs its access token. Open the address you were given, ending in <code>/?token=...</code>
(whoever runs this server set the token); the browser then keeps it for this site.</p>"""
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
    access_token: str | None = None  # None: no login (refused by __main__ beyond loopback)
    rate_limit: int = 10  # jobs one client address may start per RATE_WINDOW

    @classmethod
    def from_env(cls, backend: Backend) -> "WebSettings":
        work_dir = os.environ.get("SEEDVR_WEB_DIR")
        return cls(
            max_upload_bytes=env_number("SEEDVR_WEB_MAX_UPLOAD_BYTES", int(backend.max_input_bytes)),
            result_ttl=env_number("SEEDVR_WEB_RESULT_TTL", float(cls.result_ttl)),
            max_active_jobs=env_number("SEEDVR_WEB_MAX_ACTIVE_JOBS", int(cls.max_active_jobs)),
            work_dir=Path(work_dir) if work_dir else None,
            access_token=os.environ.get("SEEDVR_WEB_TOKEN", "").strip() or None,
            rate_limit=env_number("SEEDVR_WEB_RATE_LIMIT", cls.rate_limit),
        )


class RateLimit:
    """At most `limit` events per `window` seconds for each key (a client address), sliding."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def retry_after(self, key: str) -> float:
        """0 and the event is counted, or the seconds until the key may try again."""
        now, events = self.clock(), self._events[key]
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window - now
        events.append(now)
        return 0.0


def _has_token(request: Request, token: str) -> bool:
    offered = request.cookies.get(ACCESS_COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
    return hmac.compare_digest(offered.encode(), token.encode())


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
    jobs_per_client = RateLimit(settings.rate_limit, RATE_WINDOW)

    async def check_access(request: Request, call_next):
        """With a token, `/?token=...` sets the access cookie; anything but the static files needs it."""
        token = settings.access_token
        if token is None or request.url.path.startswith("/static/"):
            return await call_next(request)
        offered = request.query_params.get("token")
        if request.url.path == "/" and offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
            response = RedirectResponse("/", status_code=303)  # drops the token from the address bar
            secure = request.url.scheme == "https"
            response.set_cookie(ACCESS_COOKIE, token, httponly=True, samesite="strict", secure=secure)
            return response
        if _has_token(request, token):
            return await call_next(request)
        if request.url.path.startswith("/api/"):
            message = "this server needs its access token: open the page with ?token=... or send it as a Bearer token"
            return JSONResponse({"error": message, "error_code": "UNAUTHORIZED"}, status_code=401)
        return HTMLResponse(REFUSED_PAGE, status_code=401)

    @app.middleware("http")
    async def session_and_headers(request: Request, call_next):
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = not SESSION_PATTERN.fullmatch(session)
        if fresh:
            session = secrets.token_urlsafe(32)
        request.state.session = session
        response = await check_access(request, call_next)
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
        client = request.client.host if request.client else "unknown"
        if wait := jobs_per_client.retry_after(client):
            raise WebError(
                429,
                "RATE_LIMITED",
                f"too many jobs from this address: at most {settings.rate_limit} per {RATE_WINDOW:g} s; "
                f"try again in {wait:.0f} s",
            )
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
