"""Worker start-up: settings checked once and answered (never a crash loop), RunPod's cached models read in
place, and a worker that answers health while its weights are still being fetched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from fakehub import FakeHub
from mediagen import make_image
from tiny import write_fake_cache, write_tiny_setup
from worker_helpers import ROOT, FakeRunPod, Updates, WorkerServer, b64

import seedvr.worker as worker_module
from seedvr.checkpoints import CHECKPOINT_FILES, REPO_3B, REPO_7B
from seedvr.manager import ManagerConfig, ModelManager
from seedvr.worker.errors import WorkerError
from seedvr.worker.service import Worker
from seedvr.worker.settings import Limits, SettingsError, WorkerSettings
from seedvr.worker.weights import Weights

SMALL = {"res_h": 64, "res_w": 96}
FILES_3B = [CHECKPOINT_FILES[n] for n in ("seedvr2_3b", "vae", "pos_emb", "neg_emb")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    return {"root": root, "config_dir": config_dir, "ckpt_dir": ckpt_dir, "image": make_image(root / "still.png")}


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("INLINE_MAX_BYTES", "8.388608e+06", 8_388_608),  # RunPod's tools write number defaults so
        ("MAX_FRAMES", "2000.0", 2000),
        ("DOWNLOAD_TIMEOUT", "2.5", 2.5),
        ("SEEDVR_CPU_SP_MAX", "2", 2),
        ("SEEDVR_WEIGHTS_WAIT", "1e3", 1000.0),
    ],
)
def test_numbers_in_any_notation(monkeypatch, name, raw, expected):
    monkeypatch.setenv(name, raw)
    settings = WorkerSettings.from_env()
    value = {
        "INLINE_MAX_BYTES": settings.limits.inline_max_bytes,
        "MAX_FRAMES": settings.limits.max_frames,
        "DOWNLOAD_TIMEOUT": settings.limits.download_timeout,
        "SEEDVR_CPU_SP_MAX": settings.cpu_sp_max,
        "SEEDVR_WEIGHTS_WAIT": settings.weights_wait,
    }[name]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "name, raw, rule",
    [
        ("MAX_FRAMES", "2.5", "a positive whole number"),
        ("SEEDVR_CPU_SP_MAX", "two", "a positive whole number"),
        ("SEEDVR_CPU_SP_MAX", "0", "a positive whole number"),
        ("DOWNLOAD_TIMEOUT", "nan", "a positive number"),
        ("MAX_INPUT_BYTES", "inf", "a positive whole number"),
        ("PROGRESS_INTERVAL", "-1", "a positive number"),
    ],
)
def test_bad_numbers_name_the_variable_and_the_rule(monkeypatch, name, raw, rule):
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=f"environment variable {name} must be {rule}, got '{raw}'"):
        WorkerSettings.from_env()


def test_a_misconfigured_worker_answers_every_job_and_health(setup, monkeypatch):
    monkeypatch.setattr(worker_module, "_worker", None)
    monkeypatch.setattr(worker_module, "_settings_error", None)
    monkeypatch.setenv("SEEDVR_CONFIG_DIR", str(setup["config_dir"]))
    monkeypatch.setenv("SEEDVR_MODEL", "seedvr2_3b")
    monkeypatch.setenv("SEEDVR_VARIANT", "sharp")
    worker_module.prepare()  # logs, does not raise
    for job_input in ({"action": "health"}, {"image": b64(setup["image"]), **SMALL}, {"action": "initialize"}):
        answer = asyncio.run(worker_module.handler({"id": "j", "input": job_input}))
        assert answer["error_code"] == "CONFIG_ERROR"
        assert answer["error"].startswith("Worker misconfigured: SEEDVR_VARIANT must be normal, or sharp with")
        assert "SEEDVR_MODEL=seedvr2_3b" in answer["error"]


def test_production_worker_stays_up_on_a_bad_setting(setup):
    """The real process, with RunPod's empty static RUNPOD_LOG_LEVEL and a bad SEEDVR_CPU_SP_MAX: it takes jobs
    and answers each with the configuration error, instead of exiting into a crash loop."""
    fake = FakeRunPod()
    env = {
        **os.environ,
        **fake.env,
        "SEEDVR_CKPT_DIR": str(setup["ckpt_dir"]),
        "SEEDVR_CONFIG_DIR": str(setup["config_dir"]),
        "SEEDVR_MODEL_CACHE": str(setup["root"] / "no-cache"),
        "SEEDVR_CPU_SP_MAX": "lots",
        "RUNPOD_LOG_LEVEL": "",
    }
    log_path = setup["root"] / "bad-setting.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "handler.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        fake.submit("health-1", {"action": "health"})
        fake.submit("restore-1", {"image": b64(setup["image"]), **SMALL})
        for job_id in ("health-1", "restore-1"):
            final = fake.wait_final(job_id, timeout=120)
            assert final["output"] == {"error_code": "CONFIG_ERROR"}, log_path.read_text()
            assert final["error"] == (
                "Worker misconfigured: environment variable SEEDVR_CPU_SP_MAX must be a positive whole number, "
                "got 'lots'"
            )
        assert process.poll() is None, "the worker exited"
        assert "configuration error: environment variable SEEDVR_CPU_SP_MAX" in log_path.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        fake.close()


# ------------------------------------------------------------------------------------------ cached models


def _worker(setup, ckpt_dir, cache, download=()) -> Worker:
    config = ManagerConfig(ckpt_dir, setup["config_dir"], download_models=tuple(download), model_cache=cache)
    return Worker(ModelManager(config), WorkerSettings(limits=Limits()), sender=Updates())


def test_a_cached_model_is_read_in_place(setup, tmp_path, caplog):
    cache, empty = tmp_path / "hub", tmp_path / "ckpts"
    empty.mkdir()
    snapshot = write_fake_cache(cache, setup["ckpt_dir"], REPO_3B, FILES_3B, revision="a" * 40)
    write_fake_cache(cache, setup["ckpt_dir"], REPO_3B, FILES_3B[:1], revision="b" * 40)  # newer, incomplete
    (cache / "models--ByteDance-Seed--SeedVR2-3B" / "refs" / "main").write_text("a" * 40)  # refs/main decides
    with caplog.at_level("INFO", logger="seedvr.manager"):
        worker = _worker(setup, empty, cache, download=["3b"])
    assert worker.manager.folders == (snapshot, empty)
    assert f"weights: RunPod cached model at {snapshot}, read in place (no download, no copy)" in caplog.text
    worker.weights.start()  # nothing is missing, so nothing is fetched (no hub is reachable here)
    assert worker.weights.state == "ready"
    health = worker.run({"id": "h", "input": {"action": "health"}})
    assert health["checkpoints"]["seedvr2_3b"] and health["weights"]["waiting_for"] == []
    answer = worker.run({"id": "r", "input": {"image": b64(setup["image"]), **SMALL}})
    assert answer["success"] is True and answer["model_type"] == "seedvr2_3b"
    assert list(empty.iterdir()) == []  # no copy
    assert worker.manager.files(worker.resident)["seedvr2_3b"] == snapshot / FILES_3B[0]


def test_files_the_cached_repository_lacks_come_from_the_checkpoint_folder(setup, tmp_path):
    cache, ckpts = tmp_path / "hub", tmp_path / "ckpts"
    ckpts.mkdir()
    snapshot = write_fake_cache(cache, setup["ckpt_dir"], REPO_7B, [CHECKPOINT_FILES["seedvr2_7b"], "ema_vae.pth"])
    for name in ("pos_emb.pt", "neg_emb.pt"):
        (ckpts / name).write_bytes((setup["ckpt_dir"] / name).read_bytes())
    worker = _worker(setup, ckpts, cache, download=["7b"])
    assert worker.manager.missing_downloads() == []
    answer = worker.run({"id": "r", "input": {"image": b64(setup["image"]), "model_type": "seedvr2_7b", **SMALL}})
    assert answer["success"] is True, answer
    files = worker.manager.files(worker.resident)
    assert (files["vae"], files["pos_emb"]) == (snapshot / "ema_vae.pth", ckpts / "pos_emb.pt")


# ------------------------------------------------------------------------------------------ serving while fetching


class SlowManager:
    """Stands in for ModelManager's download: blocks until released, or fails."""

    def __init__(self, tmp_path, fail: bool = False):
        self.release, self.fail, self.missing = threading.Event(), fail, ["seedvr2_ema_3b.pth"]
        self.config = ManagerConfig(ckpt_dir=tmp_path)
        self.folders = (tmp_path,)

    def missing_downloads(self):
        return list(self.missing)

    def download_missing(self):
        if self.fail:
            raise OSError("hub unreachable")
        self.release.wait(30)
        self.missing = []


def test_a_job_waits_for_the_download_with_progress_then_gives_up(tmp_path):
    manager = SlowManager(tmp_path)
    (tmp_path / ".incomplete").mkdir()
    (tmp_path / ".incomplete" / "seedvr2_ema_3b.pth.etag.part").write_bytes(b"x" * 1000)
    weights = Weights(manager)
    weights.start()
    assert weights.describe()["state"] == "downloading" and weights.describe()["downloaded_bytes"] == 1000
    reports: list[dict] = []
    with pytest.raises(WorkerError) as refused:
        weights.wait(0.5, reports.append, 0.05, lambda: False)
    assert refused.value.code.value == "MODEL_NOT_READY"
    assert "still downloading seedvr2_ema_3b.pth (0.0 GB so far) after waiting 0.5 s (SEEDVR_WEIGHTS_WAIT)" in str(
        refused.value
    )
    assert len(reports) >= 3 and reports[0]["stage"] == "waiting_for_weights"
    assert reports[-1]["waiting_for"] == ["seedvr2_ema_3b.pth"]
    with pytest.raises(WorkerError, match="Job cancelled while waiting"):
        weights.wait(10, reports.append, 0.05, lambda: True)
    manager.release.set()
    weights.wait(10, reports.append, 0.05, lambda: False)  # returns once the download is done
    assert weights.describe()["state"] == "ready"


def test_a_failed_download_is_answered_not_fatal(tmp_path):
    weights = Weights(SlowManager(tmp_path, fail=True))
    weights.start()
    with pytest.raises(WorkerError, match="Model not ready: the download at start failed: OSError: hub unreachable"):
        weights.wait(10, lambda update: None, 0.05, lambda: False)
    assert weights.describe()["error"] == "OSError: hub unreachable"


def test_health_answers_while_the_weights_download(setup, tmp_path):
    """The real server against a hub whose 3B checkpoint stalls: health answers at once and names what it
    waits for; a restore waits SEEDVR_WEIGHTS_WAIT seconds and then says why it cannot run."""
    shared = {name: (setup["ckpt_dir"] / name).read_bytes() for name in FILES_3B}
    with FakeHub({REPO_3B: shared}, stall_after={FILES_3B[0]: 1000}) as hub:
        env = {
            "SEEDVR_CKPT_DIR": str(tmp_path / "ckpts"),
            "SEEDVR_CONFIG_DIR": str(setup["config_dir"]),
            "SEEDVR_MODEL_CACHE": str(tmp_path / "no-cache"),
            "SEEDVR_DOWNLOAD_MODELS": "3b",
            "SEEDVR_WEIGHTS_WAIT": "2",
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        server = WorkerServer(env, tmp_path / "worker.log")
        try:
            server.wait_ready()
            health = server.runsync({"action": "health"})["output"]
            assert health["status"] == "healthy" and health["weights"]["state"] == "downloading", health
            assert FILES_3B[0] in health["weights"]["waiting_for"]
            refused = server.runsync({"image": b64(setup["image"]), **SMALL})
            assert refused["status"] == "FAILED" and "after waiting 2 s (SEEDVR_WEIGHTS_WAIT)" in refused["error"]
        finally:
            server.stop()
