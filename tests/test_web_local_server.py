"""`python -m seedvr.web --url ...` against the real RunPod local server (`python handler.py --rp_serve_api`) with
the tiny fixture models: the server's quirk (a /run job runs only when /status/{id} is POSTed) is met by the
client, results come back as files, and the worker's own messages reach the page."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from mediagen import make_video
from seedvr.media import probe
from seedvr.web import WebSettings, create_app, local_server
from tiny import write_tiny_setup
from worker_helpers import WorkerServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("web_local_server")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    server = WorkerServer({"SEEDVR_CKPT_DIR": str(ckpt_dir), "SEEDVR_CONFIG_DIR": str(config_dir)}, root / "worker.log")
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


def run_job(client: TestClient, body: bytes, query: str, timeout: float = 240) -> dict:
    answer = client.post(f"/api/jobs?{query}", content=body)
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/api/jobs/{answer.json()['id']}").json()
        if view["state"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"job still {view['state']} after {timeout} s")


def test_jobs_through_the_local_runpod_server(worker_url, tmp_path):
    clip = make_video(tmp_path / "clip.mp4", frames=5, width=64, height=48)
    app = create_app(local_server(worker_url, 1_000_000, 300), WebSettings(max_upload_bytes=1_000_000), "server")
    with TestClient(app) as client:
        config = client.get("/api/config").json()
        assert (config["reports_progress"], config["can_cancel"]) == (False, False)

        done = run_job(client, clip.read_bytes(), "name=clip.mp4&scale=1.5&seed=3")
        assert done["state"] == "completed", done
        assert done["result"]["resolution"] == "96x72" and done["result"]["processing_info"]["seed"] == 3
        saved = tmp_path / "restored.mp4"
        saved.write_bytes(client.get("/" + done["result"]["url"]).content)
        assert (probe(saved).kind, probe(saved).frames) == ("video", 5)

        broken = run_job(client, b"not a video" * 10, "name=broken.mp4")
        assert broken["state"] == "failed" and broken["error"].startswith("Unsupported media:")

        invalid = run_job(client, clip.read_bytes(), "name=clip.mp4&res_h=10")
        assert invalid["error"] == "res_h must be an integer between 64 and 4096"
