"""The deployment files agree with each other and with the worker: .runpod/hub.json, .runpod/tests.json, the
Dockerfile and requirements.txt. What RunPod's Hub would only find out in a billed test run (a disk too small for
a choice of the form, a test timeout shorter than a cold start, a static entry that breaks the SDK, a setting the
worker refuses) fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from seedvr.checkpoints import FILE_BYTES, MODEL_CHOICES, SHARED_FILES
from seedvr.manager import ManagerConfig
from seedvr.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
REQUIREMENTS = (ROOT / "requirements.txt").read_text()

IMAGE_GB = 15  # the built image (torch with its CUDA 13 libraries, PyAV, the venv) on the container disk, rounded up
MIN_DOWNLOAD_BYTES_PER_S = 20e6  # a slow hub transfer; the weights wait must cover the test's download at this rate
PROCESSING_S = 300  # model load and the tiny restore, with margin
# The CUDA runtime of each pinned torch's default Linux wheel on PyPI (from the wheel's Requires-Dist:
# `pip install --dry-run --no-deps --report - torch==2.13.0` lists cuda-toolkit 13.0.3).
TORCH_WHEEL_CUDA = {"2.13.0": (13, 0)}
SDK_LOG_LEVELS = ("NOTSET", "TRACE", "DEBUG", "INFO", "WARN", "ERROR")


def _inputs() -> dict[str, dict]:
    return {e["key"]: e["input"] for e in HUB["config"]["env"] if "input" in e}


def _test_env() -> dict[str, str]:
    return {e["key"]: e["value"] for e in TESTS["config"]["env"]}


def _dockerfile_env() -> dict[str, str]:
    """The ENV block's KEY=VALUE pairs (continued lines joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    return dict(re.findall(r"(?m)(?:^ENV|\s)\s*([A-Z_]+)=(\S+)", "\n".join(re.findall(r"(?m)^ENV .*$", text))))


def _weights_gb(models: str) -> float:
    names = {n for model in models.split() for n in MODEL_CHOICES[model]}
    return sum(FILE_BYTES[n] for n in names | (set(SHARED_FILES) if names else set())) / 1e9


def _form_choices() -> list[dict[str, str]]:
    """Every environment the Hub form can produce from one option or preset, with RunPod's float notation for
    numbers (its CLI writes 8388608 as 8.388608e+06)."""
    inputs = _inputs()
    defaults = {key: i["default"] for key, i in inputs.items() if "default" in i}
    choices = [{**defaults, **preset["defaults"]} for preset in HUB["config"]["presets"]]
    for key, spec in inputs.items():
        choices += [{**defaults, key: option["value"]} for option in spec.get("options", [])]
    written = [
        {k: f"{v:e}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v) for k, v in env.items()}
        for env in choices
    ]
    return written


def test_no_static_entry_can_break_the_sdk():
    """RunPod's tools turn a static hub.json entry into an empty string, and RUNPOD_LOG_LEVEL="" makes the SDK
    fail at import; the Dockerfile sets what must be set."""
    assert [e["key"] for e in HUB["config"]["env"] if "input" not in e] == []
    assert all(isinstance(v, str) and v.strip() for v in _test_env().values())
    assert _dockerfile_env()["RUNPOD_LOG_LEVEL"] in SDK_LOG_LEVELS
    assert "RUNPOD_LOG_LEVEL" not in _test_env() and "RUNPOD_LOG_LEVEL" not in _inputs()


def test_every_choice_of_the_form_is_a_setting_the_worker_takes(monkeypatch):
    for env in _form_choices():
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        if (env["SEEDVR_MODEL"], env["SEEDVR_VARIANT"]) == ("seedvr2_3b", "sharp"):
            # the form cannot forbid this pair; the worker answers it on every job (test_worker_startup)
            with pytest.raises(ValueError, match="SEEDVR_VARIANT must be normal, or sharp with SEEDVR_MODEL=seedvr2_7b"):
                ManagerConfig.from_env()
            continue
        ManagerConfig.from_env()
        WorkerSettings.from_env()
    for preset in HUB["config"]["presets"]:
        for key, value in preset["defaults"].items():
            options = [o["value"] for o in _inputs()[key].get("options", [])]
            assert not options or value in options, (preset["name"], key, value)


def test_the_container_disk_fits_every_download_choice():
    """The default checkpoint folder is on the container disk, so each download choice and the image must fit it."""
    assert not _inputs()["SEEDVR_CKPT_DIR"]["default"].startswith("/runpod-volume")
    disk = HUB["config"]["containerDiskInGb"]
    downloads = {env["SEEDVR_DOWNLOAD_MODELS"] for env in _form_choices()} | {_test_env()["SEEDVR_DOWNLOAD_MODELS"]}
    for models in downloads:
        assert _weights_gb(models) + IMAGE_GB <= disk, f"SEEDVR_DOWNLOAD_MODELS={models!r} does not fit {disk} GB"


def test_the_hub_test_timeouts_fit_a_cold_start():
    env = _test_env()
    init = int(env["RUNPOD_INIT_TIMEOUT"])
    assert init == int(_dockerfile_env()["RUNPOD_INIT_TIMEOUT"])
    wait = float(env["SEEDVR_WEIGHTS_WAIT"])
    assert wait >= _weights_gb(env["SEEDVR_DOWNLOAD_MODELS"]) * 1e9 / MIN_DOWNLOAD_BYTES_PER_S
    for test in TESTS["tests"]:
        needs = init if test["input"].get("action") == "health" else init + wait + PROCESSING_S
        assert test["timeout"] >= needs * 1000, f"test {test['name']}: {test['timeout']} ms < {needs} s"


def test_the_image_installs_the_pinned_torch_and_matches_the_cuda_versions():
    pins = dict(re.findall(r"(?m)^([A-Za-z0-9_.\[\]-]+)==(\S+)", REQUIREMENTS))
    # torch comes from requirements.txt like everything else: no second pin, no other index that may lack it
    assert re.search(r"(?m)^RUN pip install -r requirements\.txt", DOCKERFILE)
    assert "--index-url" not in DOCKERFILE and "torch==" not in DOCKERFILE
    cuda = TORCH_WHEEL_CUDA[pins["torch"]]
    for versions in (HUB["config"]["allowedCudaVersions"], TESTS["config"]["allowedCudaVersions"]):
        assert versions and all(tuple(map(int, v.split("."))) >= cuda for v in versions), versions
    base = re.search(r"(?m)^FROM (\S+)", DOCKERFILE)[1]
    tag = re.match(r"nvidia/cuda:(\d+)\.(\d+)", base)
    assert tag is None or (int(tag[1]), int(tag[2])) == cuda, f"{base} brings another CUDA than torch's {cuda}"


def test_the_image_copies_what_exists_and_runs_the_handler():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for line in re.findall(r"(?m)^COPY (.+)$", DOCKERFILE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists() and source not in ignored, source
    assert re.search(r'(?m)^CMD \["python", "-u", "handler.py"\]$', DOCKERFILE)
