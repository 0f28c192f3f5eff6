"""Property-based fuzz of the handler (hypothesis): whatever JSON arrives, the worker answers.

Random inputs mix the real field names with junk ones, and well-typed values with wrong types, huge numbers,
NaN, infinities and unicode; some carry a real tiny image, so that option combinations reach the pipeline
(tiny models, outputs capped at 96x96 so that big sizes are refused before the model). Every answer must be a
success or one documented error code with a one-line string, the handler must never raise, and no job folder
may stay behind. No network: `media_url` resolves nothing.
"""

from __future__ import annotations

import asyncio
import math
import socket
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediagen import make_image
from tiny import write_tiny_setup
from worker_helpers import b64

from seedvr.manager import ManagerConfig, ModelManager
from seedvr.worker.errors import ErrorCode
from seedvr.worker.service import Worker
from seedvr.worker.settings import Limits, WorkerSettings

CODES = {code.value for code in ErrorCode}

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
# Values of the right type, in range or just outside it, so that requests also get past validation.
FIELDS = {
    "action": st.sampled_from(["health", "initialize", "restore", "upscale"]),
    "media": st.text(max_size=20),
    "video": st.text(max_size=20),
    "image": st.text(max_size=20),
    "media_url": st.sampled_from(["http://127.0.0.1:9/x.mp4", "https://no-such.invalid/a.mp4", "ftp://x/y"]),
    "media_type": st.sampled_from(["auto", "video", "image"]),
    "res_h": st.sampled_from([64, 96, 4096]) | st.integers(-10, 10**6),
    "res_w": st.sampled_from([64, 96, 4096]) | st.integers(-10, 10**6),
    "scale": st.floats(0.1, 20),
    "seed": st.integers(-1, 2**33),
    "cfg_scale": st.floats(-1, 25),
    "cfg_rescale": st.floats(-0.5, 1.5),
    "sample_steps": st.integers(0, 3),
    "color_fix": st.sampled_from(["wavelet", "adain", "none", "auto"]),
    "batch_frames": st.integers(0, 14),
    "overlap_frames": st.integers(0, 10),
    "fps": st.floats(0, 300),
    "keep_audio": st.booleans(),
    "output_format": st.sampled_from(["mp4", "webm", "mov", "png", "jpg", "webp", "gif"]),
    "crf": st.integers(-1, 60),
    "output_mode": st.sampled_from(["auto", "inline", "upload"]),
    "model_type": st.sampled_from(["seedvr2_3b", "seedvr2_7b"]),
    "model_variant": st.sampled_from(["normal", "sharp"]),
    "sp_size": st.integers(0, 3),
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    worker = Worker(
        ModelManager(ManagerConfig(ckpt_dir, config_dir)),
        WorkerSettings(limits=Limits(max_input_bytes=100_000, max_output_pixels=96 * 96, download_timeout=2)),
        sender=lambda job, update: None,
    )
    worker.image = b64(make_image(root / "tiny.png", width=24, height=16))
    worker.jobs_dir = root / "jobs"
    worker.jobs_dir.mkdir()
    return worker


def _mostly(value: st.SearchStrategy) -> st.SearchStrategy:
    """The field's own kind of value nine times in ten, junk the tenth."""
    return st.integers(0, 9).flatmap(lambda i: junk if i == 9 else value)


@st.composite
def job_inputs(draw, image: str):
    """Mostly objects of real fields, typed well or not; sometimes a real image; now and then anything."""
    if draw(st.integers(0, 19)) == 19:
        return draw(junk)
    payload = draw(st.fixed_dictionaries({}, optional={name: _mostly(value) for name, value in FIELDS.items()}))
    if draw(st.integers(0, 9)) == 9:
        payload[draw(st.text(max_size=12))] = draw(junk)
    if draw(st.integers(0, 9)) >= 3:
        payload[draw(st.sampled_from(["media", "image", "video"]))] = image
    return payload


def test_any_input_gets_a_documented_answer(worker, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(worker.jobs_dir))

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(job_inputs(worker.image), st.one_of(st.none(), st.text(max_size=20), st.integers()))
    def answers(job_input, job_id):
        answer = asyncio.run(worker.handle({"id": job_id, "input": job_input}))
        assert isinstance(answer, dict)
        if "error" in answer:
            assert answer["error_code"] in CODES, answer
            message = answer["error"]
            assert isinstance(message, str) and message and "\n" not in message and "Traceback" not in message
            assert answer["error_code"] != "INTERNAL", answer
        else:
            assert answer.get("success") is True or answer.get("status") == "healthy" or answer.get("ready") is True
        assert not any(p.name.startswith("seedvr-") for p in worker.jobs_dir.iterdir())
        assert all(not isinstance(v, float) or math.isfinite(v) for v in answer.values())

    answers()
