"""The worker's command lines: `python handler.py --test_input ...` (the SDK's one-job mode, which exits 0
when the job succeeds and 1 when the answer carries an error, so test_input.json doubles as a smoke test of
the whole stack) and scripts/serve_local.sh (fetch missing weights, then serve), on the tiny fixture models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fakehub import FakeHub
from tiny import write_tiny_setup
from worker_helpers import ROOT, WorkerServer

from seedvr.checkpoints import CHECKPOINT_FILES, HUB_REPOS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_setup(tmp_path_factory.mktemp("worker_cli"))


@pytest.fixture(scope="module")
def env(tiny):
    config_dir, ckpt_dir = tiny
    environ = {
        **os.environ,
        "SEEDVR_CKPT_DIR": str(ckpt_dir),
        "SEEDVR_CONFIG_DIR": str(config_dir),
        "RUNPOD_LOG_LEVEL": "INFO",
    }
    environ.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return environ


def run_handler(env: dict, job: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "handler.py", "--test_input", job],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_test_input_json_runs_and_exits_zero(env):
    job = (ROOT / "test_input.json").read_text()
    assert json.loads(job)["input"]["media"]
    result = run_handler(env, job)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # rc 0 means the answer had no `error` (the SDK's rule); its log line of the answer is cut in the middle.
    assert "Local testing complete" in result.stdout


def test_failing_job_exits_one(env):
    result = run_handler(env, json.dumps({"input": {"action": "restore", "media": "%%%"}}))
    assert result.returncode == 1
    assert "Invalid base64 media data" in result.stdout + result.stderr


def tiny_hub(tiny) -> FakeHub:
    """A local stand-in of the Hugging Face hub that serves the tiny checkpoints under the real names."""
    repos: dict[str, dict[str, bytes]] = {}
    for name, file in CHECKPOINT_FILES.items():
        repos.setdefault(HUB_REPOS[name], {})[file] = (tiny[1] / file).read_bytes()
    return FakeHub(repos)


def hub_env(hub: FakeHub, tmp_path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def fetched(ckpt_dir) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_file())


THREE_B_FILES = sorted(CHECKPOINT_FILES[n] for n in ("seedvr2_3b", "vae", "pos_emb", "neg_emb"))


@pytest.mark.slow
def test_download_on_start_then_test_input(env, tiny, tmp_path):
    """SEEDVR_DOWNLOAD_MODELS: an endpoint without baked weights fetches them before its first job."""
    ckpt_dir = tmp_path / "ckpts"
    with tiny_hub(tiny) as hub:
        environ = {**env, **hub_env(hub, tmp_path), "SEEDVR_CKPT_DIR": str(ckpt_dir), "SEEDVR_DOWNLOAD_MODELS": "3b"}
        result = run_handler(environ, (ROOT / "test_input.json").read_text())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert fetched(ckpt_dir) == THREE_B_FILES


def test_bad_setting_stops_the_worker_at_start(env):
    result = run_handler({**env, "SEEDVR_DOWNLOAD_MODELS": "13b"}, (ROOT / "test_input.json").read_text())
    assert result.returncode != 0 and "SEEDVR_DOWNLOAD_MODELS takes 3b, 7b, 7b-sharp, all" in result.stderr


@pytest.mark.slow
def test_serve_local_fetches_missing_weights_then_serves(tiny, tmp_path):
    """On a machine without weights: the script downloads them (from a local stand-in of the hub) and serves."""
    config_dir = tiny[0]
    ckpt_dir = tmp_path / "ckpts"
    with tiny_hub(tiny) as hub:
        server = WorkerServer(
            {
                "VENV": "none",  # the test's own Python already has requirements.txt
                "SEEDVR_SKIP_INSTALL": "1",
                "SEEDVR_CKPT_DIR": str(ckpt_dir),
                "SEEDVR_CONFIG_DIR": str(config_dir),
                **hub_env(hub, tmp_path),
            },
            tmp_path / "serve_local.log",
            serve_local=True,
        )
        try:
            server.wait_ready(timeout=180)
            assert fetched(ckpt_dir) == THREE_B_FILES
            health = server.runsync({"action": "health"})["output"]
            assert health["checkpoints"] == {
                "seedvr2_3b": True,
                "seedvr2_7b": False,
                "seedvr2_7b_sharp": False,
                "vae": True,
            }
            job = json.loads((ROOT / "test_input.json").read_text())["input"]
            answer = server.runsync(job)
            assert answer["status"] == "COMPLETED", server.log_tail()
            assert answer["output"]["resolution"] == "90x68" and answer["output"]["model_type"] == "seedvr2_3b"
        finally:
            server.stop()
    assert "missing in" in server.log_path.read_text() and "downloading 3b" in server.log_path.read_text()


def test_importing_handler_loads_nothing_heavy():
    heavy = "{'torch', 'runpod', 'seedvr.pipeline', 'seedvr.manager'}"
    code = f"import sys, handler; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
