"""Test helpers of the worker tests: a real HTTP file server, a real S3-compatible server (moto in server
mode), and the worker's local API server (`python handler.py --rp_serve_api`) run as a subprocess.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Updates:
    """Collects progress updates as RunPod's progress_update would receive them."""

    def __init__(self):
        self.sent: list[dict] = []
        self.on_update = None

    def __call__(self, job: dict, update: dict) -> None:
        self.sent.append(update)
        if self.on_update:
            self.on_update(update)


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


# ---------------------------------------------------------------------------------------------- files


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves `routes`: path -> (bytes, options). Options: `no_length` (chunked, no Content-Length),
    `status`, `delay` (seconds between chunks), `headers` (extra response headers, e.g. a redirect's
    Location), `length` (a declared Content-Length other than the body's; the connection closes after
    the body, as a server that dies midway)."""

    routes: dict[str, tuple[bytes, dict[str, Any]]] = {}
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body, options = self.routes.get(self.path, (b"not found", {"status": 404}))
        self.send_response(options.get("status", 200))
        for name, value in options.get("headers", {}).items():
            self.send_header(name, value)
        if options.get("no_length"):
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(options.get("length", len(body))))
        if "length" in options:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]
        for chunk in chunks:
            if options.get("delay"):
                time.sleep(options["delay"])
            if options.get("no_length"):
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            else:
                self.wfile.write(chunk)
        if options.get("no_length"):
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def file_server(routes: dict[str, tuple[bytes, dict[str, Any]]]) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT) of a threaded server for `routes`."""
    handler = type("Handler", (_FileHandler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a slow route must not hold the shutdown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------- S3


@contextlib.contextmanager
def s3_server(bucket: str = "restored") -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with one bucket; yields the BUCKET_* environment for the worker."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "BUCKET_ENDPOINT_URL": f"http://{host}:{port}",
        "BUCKET_ACCESS_KEY_ID": "test-key",
        "BUCKET_SECRET_ACCESS_KEY": "test-secret",
        "BUCKET_NAME": bucket,
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["BUCKET_ENDPOINT_URL"],
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    try:
        yield env
    finally:
        server.stop()


def fetch(url: str) -> tuple[bytes, str]:
    """GET a URL (e.g. a presigned one): body and content type."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), response.headers.get("Content-Type", "")


# ---------------------------------------------------------------------------------------------- worker


class WorkerServer:
    """`python handler.py --rp_serve_api` in a subprocess, and the calls a client makes to it."""

    def __init__(self, env: dict[str, str], log_path: Path, serve_local: bool = False):
        """`serve_local`: start through scripts/serve_local.sh instead of calling handler.py directly."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "RUNPOD_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **env}
        full_env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
        if serve_local:
            command = ["bash", "scripts/serve_local.sh", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            command = [
                sys.executable,
                "handler.py",
                "--rp_serve_api",
                "--rp_api_host",
                "127.0.0.1",
                "--rp_api_port",
                str(self.port),
            ]
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/openapi.json", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log_tail()}")

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> dict[str, Any]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def runsync(self, job_input: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        return self.post("/runsync", {"input": job_input}, timeout)

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


# ---------------------------------------------------------------------------------------------- RunPod


class FakeRunPod:
    """RunPod on loopback, both sides of the queue. Worker side: job-take hands out queued jobs, job-stop sends
    stop signals, job-done records every POST (progress updates and final results) in arrival order. Client
    side (`api_url`): POST /v2/<endpoint>/run queues a job, GET /v2/<endpoint>/status/<id> reports it from
    what the worker posted, as RunPod's API does.

    `env` is what a worker process needs to run in production mode against it.
    """

    def __init__(self):
        self.jobs: list[dict[str, Any]] = []
        self.stop: list[str] = []
        self.posts: list[tuple[str, dict[str, Any]]] = []  # (job id, body)
        self.auth: list[str | None] = []  # Authorization headers of client calls
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/job-take/"):
                    self._answer(fake._next(fake.jobs))
                elif self.path.startswith("/job-stop/"):
                    ids = fake._next(fake.stop)
                    self._answer(None if ids is None else {"jobsToStop": [ids]})
                elif self.path.startswith("/v2/"):
                    fake.auth.append(self.headers.get("Authorization"))
                    self._answer(fake.status(self.path.rsplit("/", 1)[-1]))
                else:  # ping
                    self._answer({})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.startswith("/v2/"):
                    fake.auth.append(self.headers.get("Authorization"))
                    job_id = f"job-{len(fake.auth)}"
                    fake.submit(job_id, body["input"])
                    self._answer({"id": job_id, "status": "IN_QUEUE"})
                    return
                job_id = self.path.split("?")[0].rsplit("/", 1)[-1]
                with fake.lock:
                    fake.posts.append((job_id, body))
                self._answer({})

            def _answer(self, payload: Any) -> None:
                if payload is None:
                    time.sleep(0.3)  # a short long-poll keeps the worker from spinning
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api_url = f"{base}/v2"
        self.env = {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID",
            "RUNPOD_POD_ID": "test-worker",
            "RUNPOD_AI_API_KEY": "test-key",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _next(self, queue: list) -> Any:
        with self.lock:
            return queue.pop(0) if queue else None

    def submit(self, job_id: str, job_input: dict[str, Any]) -> None:
        with self.lock:
            self.jobs.append({"id": job_id, "input": job_input})

    def stop_job(self, job_id: str) -> None:
        with self.lock:
            self.stop.append(job_id)

    def bodies(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for posted, body in self.posts if posted == job_id]

    def final(self, job_id: str) -> dict[str, Any] | None:
        done = [body for body in self.bodies(job_id) if body.get("status") != "IN_PROGRESS"]
        return done[-1] if done else None

    def status(self, job_id: str) -> dict[str, Any]:
        """What RunPod's GET /status answers: the final result, else the latest progress, else queued."""
        bodies = self.bodies(job_id)
        final = self.final(job_id)
        if final is not None:
            state = "FAILED" if "error" in final else "COMPLETED"
            return {"id": job_id, "status": state, **{k: v for k, v in final.items() if k in ("output", "error")}}
        if bodies:
            return {"id": job_id, "status": "IN_PROGRESS", "output": bodies[-1]["output"]}
        return {"id": job_id, "status": "IN_QUEUE"}

    def wait_final(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (body := self.final(job_id)) is not None:
                return body
            time.sleep(0.1)
        raise TimeoutError(f"no result for job {job_id} after {timeout} s")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------- hostile URLs


class HostileServer:
    """A loopback server whose paths misbehave on purpose, for `media_url` faults. Every loop is bounded.

    /file/NAME          the bytes of `files[NAME]`
    /drip               Content-Length 5000, then one byte every 50 ms (at most 400 bytes, 20 s)
    /stall              Content-Length 5000, then nothing (held up to 30 s)
    /lie                Content-Length 5000, 100 bytes, then the connection is closed
    /huge               Content-Length 6 GiB, then the connection is closed
    /redirect?to=URL    302 to URL

    `hits` lists the paths asked for (query included); `cut` the bytes a drip had sent when the client hung up.
    """

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = files or {}
        self.hits: list[str] = []
        self.cut: list[int] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                server.hits.append(self.path)
                path, _, query = self.path.partition("?")
                if path == "/redirect":
                    self._head(302, Location=urllib.parse.parse_qs(query)["to"][0], **{"Content-Length": "0"})
                elif path.startswith("/file/") and path[6:] in server.files:
                    body = server.files[path[6:]]
                    self._head(200, **{"Content-Length": str(len(body))})
                    self.wfile.write(body)
                elif path in ("/drip", "/stall", "/lie", "/huge"):
                    self._misbehave(path)
                else:
                    self._head(404, **{"Content-Length": "0"})

            def _head(self, status: int, **headers: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()

            def _misbehave(self, path: str) -> None:
                self._head(200, **{"Content-Length": str(6 << 30 if path == "/huge" else 5000)})
                if path == "/lie":
                    self.wfile.write(b"x" * 100)
                    self.close_connection = True
                elif path == "/stall":
                    time.sleep(30)
                elif path == "/drip":
                    for sent in range(400):
                        try:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                        except OSError:
                            server.cut.append(sent)
                            return
                        time.sleep(0.05)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> "HostileServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def vm_hwm_bytes(pid: int) -> int:
    """The peak resident memory of a process so far (Linux: VmHWM in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def job_worker(manager, tmp_path: Path, monkeypatch, settings):
    """A Worker whose job folders go to tmp_path/jobs (`worker.jobs_dir`, so a test can check that every job
    removed its own) and whose progress updates are collected in `worker.updates`."""
    import tempfile

    from seedvr.worker.service import Worker

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(jobs))
    updates = Updates()
    worker = Worker(manager, settings, sender=updates)
    worker.updates, worker.jobs_dir = updates, jobs
    return worker
