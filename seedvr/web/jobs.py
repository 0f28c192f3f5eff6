"""The web page's jobs and where they run: a RunPod endpoint, the RunPod local server, or the worker in-process.

Every backend speaks the worker's JSON contract (shared/spec/api.md) and answers in RunPod's `/status` shape
({"status", "output", "error"}), so the job bookkeeping below is one code path whatever runs the model.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import requests

log = logging.getLogger("seedvr.web")

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
ACTIVE = ("uploading", "queued", "running")
RUNPOD_API = "https://api.runpod.ai/v2"
RUNPOD_MAX_RUN_BYTES = 10_000_000  # RunPod refuses a /run body over 10 MB
JSON_ENVELOPE_BYTES = 16 * 1024  # room for the options around the base64 media
DEFAULT_FORMATS = {"video": "mp4", "image": "png"}
ANSWER_FIELDS = ("media_type", "model_type", "model_variant", "resolution", "processing_info")

Report = Callable[[dict], None]


class WebError(Exception):
    """A failure the page shows as it is: an HTTP status, an API-style error code and a readable message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Backend(Protocol):
    """Runs one job to its end; `report` receives every non-final `/status` answer."""

    label: str
    max_input_bytes: int
    reports_progress: bool
    can_cancel: bool

    def run(self, job_id: str, payload: dict, report: Report, cancel: threading.Event) -> dict: ...


# ---------------------------------------------------------------------------------------------- backends


def base64_budget(json_limit: int) -> int:
    """The largest file whose base64 still fits a JSON body of `json_limit` bytes."""
    return (json_limit - JSON_ENVELOPE_BYTES) * 3 // 4


@dataclass
class HttpBackend:
    """A worker behind RunPod's queue API: POST /run, then poll /status/{id} until the job ends."""

    base_url: str
    label: str
    max_input_bytes: int
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # holds the API key: never logged
    status_method: str = "GET"
    reports_progress: bool = True
    can_cancel: bool = True
    poll_interval: float = 1.0
    poll_retries: int = 3
    request_timeout: float = 120.0
    status_timeout: float = 60.0

    def run(self, job_id: str, payload: dict, report: Report, cancel: threading.Event) -> dict:
        status = self._call("POST", "/run", {"input": payload}, self.request_timeout)
        remote = status.get("id")
        if not remote:
            raise WebError(502, "INTERNAL", f"{self.label} answered /run without a job id")
        log.info("job %s is %s on %s", job_id, remote, self.label)
        failures = 0
        while status.get("status") not in TERMINAL:
            report(status)
            if cancel.wait(self.poll_interval):
                self._cancel(remote)
                return {"status": "CANCELLED"}
            try:
                status = self._call(self.status_method, f"/status/{remote}", None, self.status_timeout)
                failures = 0
            except WebError:
                failures += 1  # a network hiccup must not lose a job that is still running remotely
                if failures > self.poll_retries:
                    raise
        return status

    def _cancel(self, remote: str) -> None:
        if not self.can_cancel:
            return
        try:
            self._call("POST", f"/cancel/{remote}", None, self.request_timeout)
        except WebError as err:
            log.warning("cancel of %s failed: %s", remote, err.message)

    def _call(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        try:
            response = requests.request(method, self.base_url + path, json=body, headers=self.headers, timeout=timeout)
        except requests.RequestException as err:
            raise WebError(502, "WORKER_UNREACHABLE", f"could not reach {self.label}: {type(err).__name__}") from None
        if response.status_code in (401, 403):
            raise WebError(502, "WORKER_UNREACHABLE", f"{self.label} refused the API key (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise WebError(502, "WORKER_UNREACHABLE", f"{self.label} answered HTTP {response.status_code} to {method} {path.split('/')[1]}")
        try:
            answer = response.json()
        except ValueError:
            raise WebError(502, "WORKER_UNREACHABLE", f"{self.label} answered {path.split('/')[1]} with something that is not JSON") from None
        if not isinstance(answer, dict):
            raise WebError(502, "WORKER_UNREACHABLE", f"{self.label} answered {path.split('/')[1]} with JSON that is not an object")
        return answer


def runpod_endpoint(endpoint_id: str, api_key: str, api_base: str = RUNPOD_API) -> HttpBackend:
    """A RunPod serverless endpoint; its /run takes at most 10 MB of JSON, so about 7.5 MB of media."""
    if not endpoint_id or not api_key:
        raise ValueError("a RunPod endpoint needs RUNPOD_ENDPOINT_ID (or --endpoint) and RUNPOD_API_KEY")
    return HttpBackend(
        base_url=f"{api_base.rstrip('/')}/{endpoint_id}",
        label="the RunPod endpoint",
        max_input_bytes=base64_budget(RUNPOD_MAX_RUN_BYTES),
        headers={"Authorization": f"Bearer {api_key}"},
    )


def local_server(url: str, max_input_bytes: int, job_timeout: float) -> HttpBackend:
    """`python handler.py --rp_serve_api`: its /run only stores the job and a POST to /status runs it,
    blocking until the answer, so there is no progress to show and nothing to cancel."""
    return HttpBackend(
        base_url=url.rstrip("/"),
        label=f"the local worker at {url.rstrip('/')}",
        max_input_bytes=max_input_bytes,
        status_method="POST",
        reports_progress=False,
        can_cancel=False,
        poll_interval=0.0,
        poll_retries=0,  # a second POST /status would not find the job: the first one ran it
        status_timeout=job_timeout,
    )


def status_of_answer(answer: dict) -> dict:
    """What RunPod's /status shows for a handler's answer: an `error` key fails the job, the rest is output."""
    if "error" in answer:
        rest = {key: value for key, value in answer.items() if key != "error"}
        return {"status": "FAILED", "error": answer["error"], "output": rest}
    return {"status": "COMPLETED", "output": answer}


class InProcessBackend:
    """The worker's own job runner in this process (one machine, no RunPod): the same JSON in and out.

    Progress arrives through the worker's sender, the hook that is RunPod's progress_update on an endpoint.
    """

    label = "the in-process worker"
    reports_progress = True
    can_cancel = True  # the worker stops at the next temporal window

    def __init__(self) -> None:
        from seedvr.manager import ManagerConfig, ModelManager
        from seedvr.worker.service import Worker
        from seedvr.worker.settings import WorkerSettings

        settings = WorkerSettings.from_env()
        self.max_input_bytes = settings.limits.max_input_bytes
        self._worker = Worker(ModelManager(ManagerConfig.from_env()), settings, sender=self._progress)
        self._reports: dict[str, Report] = {}

    def run(self, job_id: str, payload: dict, report: Report, cancel: threading.Event) -> dict:
        self._reports[job_id] = report
        try:
            report({"status": "IN_PROGRESS"})
            return status_of_answer(self._worker.run({"id": job_id, "input": payload}, cancel))
        finally:
            self._reports.pop(job_id, None)

    def _progress(self, job: dict, update: dict) -> None:
        report = self._reports.get(job.get("id"))
        if report is not None:
            report({"status": "IN_PROGRESS", "output": update})


# ---------------------------------------------------------------------------------------------- results


def failure_message(status: dict) -> tuple[str, str | None]:
    """The worker's own message and code from a FAILED /status; an SDK exception arrives as a JSON string."""
    error = status.get("error")
    output = status.get("output")
    code = output.get("error_code") if isinstance(output, dict) else None
    if isinstance(error, str) and error.startswith("{"):
        try:
            error = json.loads(error).get("error_message", error)
        except (ValueError, AttributeError):
            pass
    if not error:
        return "the worker reported a failure without a message", code
    return error if isinstance(error, str) else json.dumps(error), code


def save_result(output: dict, folder: Path, fmt: str, download_timeout: float = 600.0) -> Path:
    """Write the answer's first medium (inline base64 or a presigned bucket URL) to `folder/restored.<fmt>`."""
    target = folder / f"restored.{fmt}"
    media = output.get("media") or output.get("videos")
    if media:
        data = media[0] if isinstance(media, list) else media
        try:
            target.write_bytes(base64.b64decode(data, validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise WebError(502, "INTERNAL", "the worker's answer holds media that is not valid base64") from None
        return target
    urls = output.get("media_urls")
    if not urls:
        raise WebError(
            502,
            "INTERNAL",
            "the worker reported success without media (RunPod drops results over its size limit: "
            "give the worker a bucket, see BUCKET_ENDPOINT_URL)",
        )
    try:
        with requests.get(urls[0], stream=True, timeout=download_timeout) as response:
            response.raise_for_status()
            with target.open("wb") as sink:
                for chunk in response.iter_content(1 << 20):
                    sink.write(chunk)
    except requests.RequestException as err:
        raise WebError(502, "DOWNLOAD_FAILED", f"could not fetch the result from the bucket: {type(err).__name__}") from None
    return target


# ---------------------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One restore of one browser. `id` is an unguessable token, and it only counts with the owner's session."""

    id: str
    session: str
    name: str
    folder: Path
    options: dict[str, Any]
    created: float
    state: str = "uploading"  # uploading, queued, running, completed, failed, cancelled
    progress: dict | None = None
    error: str | None = None
    error_code: str | None = None
    result: Path | None = None
    answer: dict | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self, now: float, ttl: float) -> dict[str, Any]:
        """What the page may see: never the session, the folder or the backend's address."""
        result = None
        if self.result is not None:
            result = {
                "url": f"api/jobs/{self.id}/result",
                "download_url": f"api/jobs/{self.id}/result?download=1",
                "download_name": self.download_name(),
                "bytes": self.result.stat().st_size,
                **(self.answer or {}),
            }
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "elapsed_seconds": round((self.finished or now) - self.created, 1),
            "progress": self.progress,
            "error": self.error,
            "error_code": self.error_code,
            "result": result,
            "expires_in_seconds": None if self.finished is None else max(0, round(self.finished + ttl - now)),
        }

    def download_name(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.name).stem).strip("._") or "media"
        resolution = (self.answer or {}).get("resolution", "")
        suffix = self.result.suffix if self.result else ""
        return f"{stem}_seedvr2{'_' + resolution if resolution else ''}{suffix}"


class JobStore:
    """The jobs of every browser; each runs in its own thread until the backend gives a final status.

    Finished jobs, their files included, are deleted `ttl` seconds after they end (`sweep`).
    """

    def __init__(self, backend: Backend, root: Path, ttl: float, max_active: int, clock: Callable[[], float] = time.time):
        self.backend = backend
        self.root = Path(root)
        self.ttl = ttl
        self.max_active = max_active
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, session: str, name: str, options: dict[str, Any]) -> Job:
        """Reserve a job (and its folder) before the upload, so the per-browser limit also bounds uploads."""
        with self._lock:
            active = sum(1 for job in self._jobs.values() if job.session == session and job.state in ACTIVE)
            if active >= self.max_active:
                raise WebError(
                    429,
                    "TOO_MANY_JOBS",
                    f"this browser already has {active} job(s) running, the limit is {self.max_active} "
                    "(SEEDVR_WEB_MAX_ACTIVE_JOBS): wait for one to finish",
                )
            job_id = secrets.token_urlsafe(24)
            folder = self.root / secrets.token_hex(8)
            folder.mkdir(parents=True)
            job = Job(job_id, session, name, folder, options, created=self.clock())
            self._jobs[job_id] = job
        return job

    def start(self, job: Job, upload: Path) -> None:
        job.state = "queued"
        worker_id = f"web-{secrets.token_hex(6)}"  # the browser's token never reaches the worker or its logs
        threading.Thread(target=self._run, args=(job, upload, worker_id), name=f"seedvr-web-{worker_id}", daemon=True).start()

    def get(self, session: str, job_id: str) -> Job:
        """The job, if it exists and belongs to this session; the same 404 otherwise, so ids cannot be probed."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or not secrets.compare_digest(job.session, session):
            raise WebError(404, "NOT_FOUND", "no such job for this browser (finished jobs are deleted after a while)")
        return job

    def discard(self, session: str, job_id: str) -> None:
        """Cancel a running job (it ends as `cancelled`) or delete a finished one with its files now."""
        job = self.get(session, job_id)
        if job.state in ACTIVE:
            job.cancel.set()
        else:
            self.remove(job)

    def sweep(self) -> int:
        """Delete the jobs that finished more than `ttl` seconds ago; returns how many."""
        now = self.clock()
        with self._lock:
            expired = [job for job in self._jobs.values() if job.finished is not None and now - job.finished >= self.ttl]
        for job in expired:
            self.remove(job)
        return len(expired)

    def close(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()

    def remove(self, job: Job) -> None:
        """Forget a job and delete its files (an aborted upload, an expired or discarded result)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job, upload: Path, worker_id: str) -> None:
        try:
            payload = {**job.options, "media": base64.b64encode(upload.read_bytes()).decode("ascii")}
            upload.unlink()  # the page keeps its own copy of the input
            status = self.backend.run(worker_id, payload, functools.partial(self._report, job), job.cancel)
            self._finish(job, status)
        except WebError as err:
            self._fail(job, err.message, err.code)
        except Exception as exc:  # noqa: BLE001 - a job thread must always leave a final state
            log.exception("job %s failed in the web server", worker_id)
            self._fail(job, f"the web server failed: {type(exc).__name__}: {exc}", "INTERNAL")
        finally:
            job.finished = self.clock()

    def _report(self, job: Job, status: dict) -> None:
        if status.get("status") == "IN_QUEUE":
            job.state = "queued"
            return
        job.state = "running"
        output = status.get("output")
        if isinstance(output, dict) and "stage" in output:
            job.progress = output

    def _finish(self, job: Job, status: dict) -> None:
        kind = status.get("status")
        if kind == "COMPLETED":
            output = status.get("output")
            if not isinstance(output, dict):
                output = {}
            fmt = job.options.get("output_format") or DEFAULT_FORMATS.get(output.get("media_type"), "bin")
            job.result = save_result(output, job.folder, fmt)
            job.answer = {key: output[key] for key in ANSWER_FIELDS if key in output}
            job.state = "completed"
        elif kind == "FAILED":
            self._fail(job, *failure_message(status))
        elif kind == "TIMED_OUT":
            self._fail(job, "the job ran past the endpoint's execution timeout", "TIMED_OUT")
        else:
            self._fail(job, "the job was cancelled", "CANCELLED")

    @staticmethod
    def _fail(job: Job, message: str, code: str | None) -> None:
        job.state = "cancelled" if code == "CANCELLED" else "failed"
        job.error, job.error_code = message, code
