"""The web server's own logic (seedvr/web): job tokens bound to a browser session, TTL cleanup, upload limits,
and the RunPod / local-server client against a tiny HTTP server on 127.0.0.1 that speaks /run + /status.
That server stands in for the transport only: the answers it gives are what the worker's contract says a
worker answers; the real worker is exercised in test_web_browser.py."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from seedvr.web import HttpBackend, JobStore, WebSettings, create_app, local_server, runpod_endpoint
from seedvr.web.__main__ import access_token, main, parse_args
from seedvr.web.app import SESSION_COOKIE, RateLimit, parse_options
from seedvr.web.jobs import WebError, base64_budget, failure_message, status_of_answer

API_KEY = "rp-secret-key-123"
ENDPOINT = "ep-abc123"
RESULT = b"\x89PNG restored bytes \x00\x01\x02" * 10


class FakeQueue:
    """RunPod's queue API on loopback: /run hands out a job id, /status/{id} plays `script` one answer per call
    (the last one repeats), /cancel/{id} is recorded. `hold` keeps the job IN_PROGRESS until it is set."""

    def __init__(self, script: list[dict[str, Any]], prefix: str = ""):
        self.script = list(script)
        self.prefix = prefix
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        self.files: dict[str, bytes] = {}
        self.hold: threading.Event | None = None

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.calls.append((method, path, headers, body))
        if path in self.files:
            return 200, self.files[path]
        route = path.removeprefix(self.prefix)
        if route == "/run" and method == "POST":
            return 200, {"id": "job-1", "status": "IN_QUEUE"}
        if route == "/status/job-1":
            if self.hold is not None and not self.hold.is_set():
                return 200, {"id": "job-1", "status": "IN_PROGRESS"}
            status = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            return 200, {"id": "job-1", **status}
        if route == "/cancel/job-1" and method == "POST":
            return 200, {"id": "job-1", "status": "CANCELLED"}
        return 404, {"error": "not found"}

    def status_calls(self) -> list[tuple[str, dict[str, str]]]:
        return [(method, headers) for method, path, headers, _ in self.calls if "/status/" in path]


@contextlib.contextmanager
def serve(queue: FakeQueue) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = queue.answer(self.command, self.path, dict(self.headers), body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _reply  # noqa: N815 - http.server's naming

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def completed(data: bytes = RESULT, **extra: Any) -> dict[str, Any]:
    output = {
        "success": True,
        "media": [base64.b64encode(data).decode()],
        "videos": [base64.b64encode(data).decode()],
        "media_type": "image",
        "model_type": "seedvr2_3b",
        "model_variant": "normal",
        "resolution": "128x96",
        "processing_info": {"seed": 7, "input_resolution": "64x48", "frames": 1},
        **extra,
    }
    return {"status": "COMPLETED", "output": output}


PROGRESS = {"stage": "dit", "window": 2, "windows": 3, "frames_done": 5, "frames_total": 9, "percent": 55.6, "eta_seconds": 4.0}
IN_PROGRESS = {"status": "IN_PROGRESS", "output": PROGRESS}


def fast(backend: HttpBackend) -> HttpBackend:
    backend.poll_interval = 0.01
    return backend


def run_store(backend, tmp_path: Path, upload: bytes = b"input bytes", name: str = "clip.png", **options) -> tuple[JobStore, Any]:
    """One job through JobStore, as the app runs it, waiting for its thread to finish."""
    store = JobStore(backend, tmp_path / "jobs", ttl=60, max_active=2)
    job = store.create("session", name, options)
    (job.folder / "input").write_bytes(upload)
    store.start(job, job.folder / "input")
    for thread in threading.enumerate():
        if thread.name.startswith("seedvr-web-"):
            thread.join(timeout=30)
    return store, job


# ---------------------------------------------------------------------------------------------- client


def test_runpod_client_submits_polls_and_saves_the_result(tmp_path):
    queue = FakeQueue([{"status": "IN_QUEUE"}, IN_PROGRESS, completed()], prefix=f"/v2/{ENDPOINT}")
    with serve(queue) as url:
        backend = fast(runpod_endpoint(ENDPOINT, API_KEY, api_base=url + "/v2"))
        store, job = run_store(backend, tmp_path, b"the upload", name='my "holiday" clip.png', seed=7, res_h=1280, res_w=720)
    assert job.state == "completed", job.error
    assert job.result.read_bytes() == RESULT
    assert job.result.name == "restored.png"
    assert job.answer["resolution"] == "128x96" and "media" not in job.answer
    assert job.download_name() == "my_holiday_clip_seedvr2_128x96.png"
    assert not (job.folder / "input").exists()  # the upload is not kept once sent
    method, path, headers, body = queue.calls[0]
    assert (method, path) == ("POST", f"/v2/{ENDPOINT}/run")
    assert body == {"input": {"seed": 7, "res_h": 1280, "res_w": 720, "media": base64.b64encode(b"the upload").decode()}}
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert [method for method, _ in queue.status_calls()] == ["GET"] * 3
    assert all(h["Authorization"] == f"Bearer {API_KEY}" for _, h in queue.status_calls())
    assert job.progress == PROGRESS  # the IN_PROGRESS output, as the worker reported it


def test_local_server_runs_the_job_with_a_posted_status(tmp_path):
    """The RunPod local server executes a /run job only when /status/{id} is POSTed."""
    queue = FakeQueue([completed()])
    with serve(queue) as url:
        store, job = run_store(local_server(url, max_input_bytes=1000, job_timeout=30), tmp_path)
    assert job.state == "completed", job.error
    assert queue.status_calls()[0][0] == "POST"
    assert "Authorization" not in queue.calls[0][2]
    assert job.result.read_bytes() == RESULT


def test_worker_error_is_shown_as_the_worker_wrote_it(tmp_path):
    failed = {"status": "FAILED", "error": "res_h must be an integer between 64 and 4096", "output": {"error_code": "INVALID_INPUT"}}
    with serve(FakeQueue([failed])) as url:
        store, job = run_store(local_server(url, 1000, 30), tmp_path)
    assert job.state == "failed" and job.result is None
    assert (job.error, job.error_code) == ("res_h must be an integer between 64 and 4096", "INVALID_INPUT")
    stopped = {"status": "FAILED", "error": "Job cancelled: stopped before the next temporal window", "output": {"error_code": "CANCELLED"}}
    with serve(FakeQueue([stopped])) as url:
        store, job = run_store(local_server(url, 1000, 30), tmp_path / "stopped")
    assert (job.state, job.error_code) == ("cancelled", "CANCELLED")


def test_failure_messages():
    sdk = json.dumps({"error_type": "ValueError", "error_message": "boom", "error_traceback": "Traceback..."})
    assert failure_message({"status": "FAILED", "error": sdk}) == ("boom", None)
    assert failure_message({"status": "FAILED", "error": ["a", "b"]}) == ('["a", "b"]', None)
    assert failure_message({"status": "FAILED"})[0].startswith("the worker reported a failure")
    assert status_of_answer({"error": "bad", "error_code": "TOO_LARGE"}) == {
        "status": "FAILED", "error": "bad", "output": {"error_code": "TOO_LARGE"}
    }
    assert status_of_answer({"success": True})["status"] == "COMPLETED"


def test_completed_without_output_is_an_error(tmp_path):
    """RunPod reports COMPLETED with no output when a result was too large to deliver."""
    with serve(FakeQueue([{"status": "COMPLETED"}])) as url:
        store, job = run_store(local_server(url, 1000, 30), tmp_path)
    assert job.state == "failed"
    assert "without media" in job.error and "BUCKET_ENDPOINT_URL" in job.error


def test_bucket_result_is_downloaded(tmp_path):
    queue = FakeQueue([])
    with serve(queue) as url:
        queue.files["/bucket/out.mp4"] = b"video from the bucket"
        output = completed(media_type="video")["output"]
        del output["media"], output["videos"]
        output["media_urls"] = [url + "/bucket/out.mp4"]
        queue.script = [{"status": "COMPLETED", "output": output}]
        store, job = run_store(local_server(url, 1000, 30), tmp_path)
    assert job.state == "completed", job.error
    assert job.result.name == "restored.mp4"
    assert job.result.read_bytes() == b"video from the bucket"


def test_unreachable_worker_and_refused_key(tmp_path):
    with serve(FakeQueue([])) as url:
        pass  # closed again: nothing listens there now
    store, job = run_store(local_server(url, 1000, 5), tmp_path / "a")
    assert (job.state, job.error_code) == ("failed", "WORKER_UNREACHABLE")
    assert "could not reach the local worker" in job.error

    class Refusing(FakeQueue):
        def answer(self, method, path, headers, body):
            self.calls.append((method, path, headers, body))
            return 401, {"error": "Unauthorized"}

    with serve(Refusing([])) as url:
        store, job = run_store(fast(runpod_endpoint(ENDPOINT, API_KEY, api_base=url)), tmp_path / "b")
    assert job.state == "failed" and "refused the API key" in job.error
    assert API_KEY not in job.error and ENDPOINT not in job.error


class Hiccup(FakeQueue):
    """Answers the first /status with HTTP 500, then follows the script."""

    def answer(self, method, path, headers, body):
        if "/status/" in path and not any("/status/" in call[1] for call in self.calls):
            self.calls.append((method, path, headers, body))
            return 500, {"error": "hiccup"}
        return super().answer(method, path, headers, body)


def test_one_failed_poll_does_not_lose_the_job(tmp_path):
    with serve(Hiccup([completed()], prefix=f"/v2/{ENDPOINT}")) as url:
        store, job = run_store(fast(runpod_endpoint(ENDPOINT, API_KEY, api_base=url + "/v2")), tmp_path / "a")
    assert job.state == "completed", job.error
    with serve(Hiccup([completed()])) as url:  # the local server: a second POST /status would not find the job
        store, job = run_store(local_server(url, 1000, 30), tmp_path / "b")
    assert (job.state, job.error) == ("failed", f"the local worker at {url} answered HTTP 500 to POST status")


def test_runpod_upload_limit_fits_the_run_payload():
    budget = base64_budget(10_000_000)
    encoded = len(base64.b64encode(b"x" * budget))
    assert 7_000_000 < budget and encoded < 10_000_000 - 8_000
    assert runpod_endpoint(ENDPOINT, API_KEY).max_input_bytes == budget
    with pytest.raises(ValueError, match="RUNPOD_API_KEY"):
        runpod_endpoint(ENDPOINT, "")


# ---------------------------------------------------------------------------------------------- server


@pytest.fixture()
def queue():
    return FakeQueue([IN_PROGRESS, completed()], prefix=f"/v2/{ENDPOINT}")


@pytest.fixture()
def app(queue, tmp_path):
    with serve(queue) as url:
        backend = fast(runpod_endpoint(ENDPOINT, API_KEY, api_base=url + "/v2"))
        settings = WebSettings(max_upload_bytes=1000, result_ttl=60, max_active_jobs=1, work_dir=tmp_path / "web")
        yield create_app(backend, settings, "runpod")


def wait_final(client: TestClient, job_id: str) -> dict:
    for _ in range(500):
        view = client.get(f"/api/jobs/{job_id}").json()
        if view["state"] in ("completed", "failed", "cancelled") and view.get("expires_in_seconds") is not None:
            return view
        threading.Event().wait(0.02)
    raise AssertionError(f"job did not finish: {view}")


def submit(client: TestClient, body: bytes = b"image bytes", query: str = "name=photo.png&seed=7") -> Any:
    return client.post(f"/api/jobs?{query}", content=body, headers={"Content-Type": "image/png"})


def test_page_and_config_hold_no_secret(app):
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="restore"' in page.text
        cookie = page.headers["set-cookie"]
        assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "default-src 'self'" in page.headers["content-security-policy"]
        config = client.get("/api/config").json()
        assert config["max_upload_bytes"] == 1000 and config["mode"] == "runpod"
        assert config["presets"]["1080p"] == [1920, 1080]
        job = submit(client).json()
        final = wait_final(client, job["id"])
        texts = [page.text, json.dumps(config), json.dumps(job), json.dumps(final)]
        texts += [client.get(f"/static/{name}").text for name in ("app.js", "style.css", "index.html")]
        for text in texts:
            assert API_KEY not in text and ENDPOINT not in text and "127.0.0.1" not in text


def test_jobs_are_visible_only_to_their_browser(app):
    with TestClient(app) as owner, TestClient(app) as other:
        owner.get("/api/config")
        other.get("/api/config")
        assert owner.cookies[SESSION_COOKIE] != other.cookies[SESSION_COOKIE]
        job = submit(owner).json()
        assert len(job["id"]) >= 32
        final = wait_final(owner, job["id"])
        assert final["state"] == "completed", final
        assert owner.get(f"/api/jobs/{job['id']}/result").content == RESULT
        for method, path in [("GET", ""), ("GET", "/result"), ("DELETE", "")]:
            answer = other.request(method, f"/api/jobs/{job['id']}{path}")
            assert answer.status_code == 404 and answer.json()["error_code"] == "NOT_FOUND"
        assert owner.get("/api/jobs/" + "A" * 32).status_code == 404


def test_result_view_download_and_range(app):
    with TestClient(app) as client:
        final = wait_final(client, submit(client).json()["id"])
        result = final["result"]
        assert result["resolution"] == "128x96" and result["processing_info"]["seed"] == 7
        assert result["download_name"] == "photo_seedvr2_128x96.png"
        inline = client.get(result["url"].replace("api/", "/api/", 1))
        assert inline.headers["content-type"] == "image/png" and inline.headers["content-disposition"].startswith("inline")
        download = client.get("/" + result["download_url"])
        assert download.headers["content-disposition"].startswith("attachment")
        assert 'filename="photo_seedvr2_128x96.png"' in download.headers["content-disposition"]
        part = client.get("/" + result["url"], headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == RESULT[:10]


def test_upload_limits(app, tmp_path):
    with TestClient(app) as client:
        too_big = submit(client, b"x" * 1001)
        assert too_big.status_code == 413 and too_big.json()["error_code"] == "TOO_LARGE"
        assert too_big.json()["error"] == "the file is 1.0 kB, over this server's upload limit of 1.0 kB"

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(11):
                yield b"y" * 100

        streamed = client.post("/api/jobs?name=a.png", content=chunks())
        assert streamed.status_code == 413 and "upload limit" in streamed.json()["error"]
        empty = submit(client, b"")
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
        unknown = submit(client, query="name=a.png&cfg=3")
        assert unknown.status_code == 400 and "unknown option 'cfg'" in unknown.json()["error"]
        bad = submit(client, query="name=a.png&seed=abc")
        assert bad.status_code == 400 and bad.json()["error"] == "seed must be an integer, got 'abc'"
        assert list((tmp_path / "web").iterdir()) == []  # refused uploads leave no files


def test_one_browser_cannot_start_more_than_its_limit(app, queue):
    queue.hold = threading.Event()
    with TestClient(app) as client:
        first = submit(client).json()
        second = submit(client)
        assert second.status_code == 429 and second.json()["error_code"] == "TOO_MANY_JOBS"
        assert "SEEDVR_WEB_MAX_ACTIVE_JOBS" in second.json()["error"]
        queue.hold.set()
        assert wait_final(client, first["id"])["state"] == "completed"
        assert submit(client).status_code == 202


def test_cancel_reaches_the_endpoint(app, queue):
    queue.hold = threading.Event()
    with TestClient(app) as client:
        job = submit(client).json()
        assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
        final = wait_final(client, job["id"])
        assert (final["state"], final["error_code"]) == ("cancelled", "CANCELLED")
    assert ("POST", f"/v2/{ENDPOINT}/cancel/job-1") in [(m, p) for m, p, _, _ in queue.calls]


def test_results_are_deleted_after_the_ttl(app, tmp_path):
    store = app.state.store
    with TestClient(app) as client:
        final = wait_final(client, submit(client).json()["id"])
        job = store.get(client.cookies[SESSION_COOKIE], final["id"])
        assert job.result.is_file()
        now = job.finished
        store.clock = lambda: now + 59
        assert store.sweep() == 0 and job.result.is_file()
        assert client.get(f"/api/jobs/{final['id']}").json()["expires_in_seconds"] == 1
        store.clock = lambda: now + 60
        assert store.sweep() == 1
        assert not job.folder.exists()
        assert client.get(f"/api/jobs/{final['id']}").status_code == 404


def test_settings_and_options_from_the_environment(monkeypatch):
    backend = runpod_endpoint(ENDPOINT, API_KEY)
    assert WebSettings.from_env(backend).max_upload_bytes == backend.max_input_bytes
    monkeypatch.setenv("SEEDVR_WEB_RESULT_TTL", "120")
    monkeypatch.setenv("SEEDVR_WEB_MAX_UPLOAD_BYTES", "5000")
    settings = WebSettings.from_env(backend)
    assert (settings.result_ttl, settings.max_upload_bytes) == (120, 5000)
    monkeypatch.setenv("SEEDVR_WEB_RESULT_TTL", "-1")
    with pytest.raises(ValueError, match="SEEDVR_WEB_RESULT_TTL must be a positive number"):
        WebSettings.from_env(backend)
    assert parse_options({"name": "x", "scale": "2.5", "res_h": "1920"}) == {"scale": 2.5, "res_h": 1920}
    with pytest.raises(WebError, match="scale must be a number"):
        parse_options({"scale": "big"})


def test_command_line(monkeypatch, capsys):
    monkeypatch.delenv("RUNPOD_ENDPOINT_ID", raising=False)
    with pytest.raises(SystemExit):
        parse_args([])
    assert "--local, --url URL or --endpoint ID" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--local", "--url", "http://127.0.0.1:8000"])
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "from-env")
    args = parse_args(["--port", "9000"])
    assert (args.endpoint, args.port, args.host) == ("from-env", 9000, "127.0.0.1")


# ---------------------------------------------------------------------------------------------- access


TOKEN = "a-long-enough-access-token"


@pytest.fixture()
def guarded(queue, tmp_path):
    with serve(queue) as url:
        backend = fast(runpod_endpoint(ENDPOINT, API_KEY, api_base=url + "/v2"))
        settings = WebSettings(
            max_upload_bytes=1000, result_ttl=60, max_active_jobs=5, work_dir=tmp_path / "web",
            access_token=TOKEN, rate_limit=2,
        )
        yield create_app(backend, settings, "runpod")


def test_a_token_guards_the_page_and_the_api(guarded):
    with TestClient(guarded) as stranger, TestClient(guarded) as user:
        page = stranger.get("/")
        assert page.status_code == 401 and "needs its access token" in page.text and 'id="restore"' not in page.text
        for response in (stranger.get("/api/config"), submit(stranger), stranger.get("/?token=wrong-token-value")):
            assert response.status_code == 401
        assert submit(stranger).json()["error_code"] == "UNAUTHORIZED"
        assert stranger.get("/static/app.js").status_code == 200  # the page's code is no secret
        entry = user.get(f"/?token={TOKEN}", follow_redirects=False)
        assert entry.status_code == 303 and entry.headers["location"] == "/"  # the token leaves the address bar
        assert "HttpOnly" in entry.headers["set-cookie"]
        assert user.get("/").status_code == 200 and user.get("/api/config").status_code == 200
        bearer = TestClient(guarded, headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.get("/api/config").status_code == 200


def test_a_client_may_start_only_so_many_jobs_a_minute(guarded):
    with TestClient(guarded, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert [submit(client).status_code for _ in range(2)] == [202, 202]
        refused = submit(client)
        assert refused.status_code == 429 and refused.json()["error_code"] == "RATE_LIMITED"
        assert refused.json()["error"].startswith("too many jobs from this address: at most 2 per 60 s; try again in")


def test_rate_limit_window_slides():
    now = [0.0]
    limit = RateLimit(2, 60, clock=lambda: now[0])
    assert [limit.retry_after("a"), limit.retry_after("a"), limit.retry_after("b")] == [0, 0, 0]
    now[0] = 50
    assert limit.retry_after("a") == 10
    now[0] = 60
    assert limit.retry_after("a") == 0  # the first job left the window


def test_listening_beyond_loopback_needs_a_token(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("SEEDVR_WEB_TOKEN", raising=False)
    with pytest.raises(SystemExit) as refused:
        main(["--endpoint", ENDPOINT, "--host", "0.0.0.0"])
    assert "--host 0.0.0.0 serves the page beyond this machine" in str(refused.value)
    assert "SEEDVR_WEB_TOKEN or --token-file FILE" in str(refused.value)
    short = tmp_path / "token"
    short.write_text("short\n")
    with pytest.raises(SystemExit, match="at least 16 characters"):
        main(["--endpoint", ENDPOINT, "--host", "0.0.0.0", "--token-file", str(short)])
    args = parse_args(["--endpoint", ENDPOINT, "--host", "0.0.0.0", "--token-file", str(short)])
    short.write_text(TOKEN + "\n")
    assert access_token(args, None) == TOKEN
    assert access_token(parse_args(["--endpoint", ENDPOINT]), None) is None  # loopback: no login needed
