"""Hostile input and injected faults against the real worker (in-process, real pipeline, tiny models).

Each test names what a client or an attacker did, and checks the answer's code, that the refusal came before
the work it protects (no download, no pipeline), that nothing is left in the job folders, and that the worker
serves the next job. Two faults are covered elsewhere and not repeated here: a cancel between windows
(tests/test_worker_jobs.py) and a sequence-parallel rank that dies mid-job (tests/test_worker_parallel.py).
"""

from __future__ import annotations

import base64
import errno
import logging
import pathlib
import subprocess
import sys
import tempfile
import time
import weakref

import pytest
import torch

from mediagen import make_image, make_png_bomb, make_video
from tiny import write_tiny_setup
from worker_helpers import (
    ROOT,
    HostileServer,
    Updates,
    WorkerServer,
    b64,
    free_port,
    job_worker,
    s3_server,
    vm_hwm_bytes,
)

from seedvr import media
from seedvr.manager import ManagerConfig, ModelManager
from seedvr.pipeline import RestoreOptions
from seedvr.worker import media_in, media_out
from seedvr.worker.errors import ErrorCode, WorkerError
from seedvr.worker.service import Worker
from seedvr.worker.settings import BucketConfig, Limits, WorkerSettings

SMALL = {"res_h": 64, "res_w": 96}
LIMITS = Limits(
    max_input_bytes=2_000_000,
    max_frames=12,
    max_output_pixels=256 * 256,
    download_timeout=1,
    max_input_pixels=1000 * 1000,
    max_output_side=1024,
)
SECRET = "SECRET-7f3a"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    return {
        "config_dir": config_dir,
        "ckpt_dir": ckpt_dir,
        "video": make_video(root / "clip.mp4", frames=9, width=64, height=48, with_audio=False),
        "image": make_image(root / "still.png", width=64, height=48),
        "thin": make_image(root / "thin.png", width=3000, height=4),
        "bomb": make_png_bomb(root / "bomb.png"),
    }


@pytest.fixture(scope="module")
def manager(setup):
    return ModelManager(ManagerConfig(setup["ckpt_dir"], setup["config_dir"]))


@pytest.fixture()
def worker(manager, tmp_path, monkeypatch):
    """Job folders checked empty after each job; private URLs allowed (the servers are on loopback)."""
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    return job_worker(manager, tmp_path, monkeypatch, WorkerSettings(limits=LIMITS, allow_private_urls=True))


def run(worker: Worker, job_input: dict, job_id: str = "fault-job", **job) -> dict:
    answer = worker.run({"id": job_id, "input": job_input, **job})
    assert not [p for p in worker.jobs_dir.iterdir() if p.name.startswith("seedvr-")], "job folder left behind"
    return answer


def image_job(setup, **extra) -> dict:
    return {"image": b64(setup["image"]), "model_type": "seedvr2_3b", **SMALL, **extra}


def assert_serves(worker: Worker, setup) -> None:
    answer = run(worker, image_job(setup))
    assert answer.get("success") is True, answer


# ------------------------------------------------------------------------------------------ media_url


def test_a_dripping_server_is_cut_at_the_deadline(worker):
    """1 byte per 50 ms with Content-Length 5000: the socket never times out, the deadline must."""
    with HostileServer() as server:
        answer = run(worker, {"media_url": server.url + "/drip", **SMALL})
        assert answer["error_code"] == "DOWNLOAD_FAILED" and "DOWNLOAD_TIMEOUT=1 s" in answer["error"], answer
        # the worker hung up long before the 400-byte drip (20 s) was over; the server notices at its next byte
        for _ in range(100):
            if server.cut:
                break
            time.sleep(0.05)
        assert server.cut and server.cut[0] < 400, server.cut


@pytest.mark.parametrize(
    "path, code, text",
    [
        ("/stall", "DOWNLOAD_FAILED", "did not deliver the file within DOWNLOAD_TIMEOUT=1 s"),
        ("/lie", "DOWNLOAD_FAILED", "broke off before the end of the file"),
        ("/huge", "TOO_LARGE", "6,442,450,944 bytes, over the input limit MAX_INPUT_BYTES=2,000,000"),
        ("/missing", "DOWNLOAD_FAILED", "HTTP 404"),
    ],
)
def test_misbehaving_servers_get_clear_errors(worker, path, code, text):
    with HostileServer() as server:
        answer = run(worker, {"media_url": server.url + path, **SMALL})
    assert answer["error_code"] == code and text in answer["error"], answer


def test_private_address_is_one_code_direct_or_through_a_redirect(worker, monkeypatch):
    """127.0.0.1 plays a public host here, 127.0.0.2 a private one; the SDK checks each redirect hop."""
    from runpod.serverless.utils import rp_ssrf

    def public(ip: str) -> bool:
        return ip == "127.0.0.1"

    monkeypatch.setattr(media_in, "is_safe_address", public)
    monkeypatch.setattr(rp_ssrf, "is_safe_address", public)
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS")
    private = Worker(worker.manager, WorkerSettings(limits=LIMITS))
    private.jobs_dir = worker.jobs_dir
    with HostileServer() as server:
        port = server.url.rsplit(":", 1)[1]
        direct = run(private, {"media_url": f"http://127.0.0.2:{port}/file/x"})
        redirected = run(private, {"media_url": f"{server.url}/redirect?to=http://127.0.0.2:{port}/file/x"})
    for answer in (direct, redirected):
        assert answer["error_code"] == "INVALID_INPUT", answer
        assert answer["error"].startswith("media_url must point to a public address: 127.0.0.2 is a private or")


def test_no_secret_from_a_url_reaches_an_answer_or_the_log(worker, caplog):
    caplog.set_level(logging.DEBUG)
    with HostileServer() as server:
        host = server.url.split("://")[1]
        urls = [
            f"http://user:{SECRET}@{host}/missing?X-Amz-Signature={SECRET}",
            f"http://{host}/stall?token={SECRET}",
            f"http://{host}/lie#{SECRET}",
            f"http://{host}/bot{SECRET}/file.mp4",
            f"http://127.0.0.1:{free_port()}/x?sig={SECRET}",
            f"http://{host}/redirect?to=http://u:{SECRET}@127.0.0.1:{free_port()}/x%3Fsig%3D{SECRET}",
        ]
        answers = [run(worker, {"media_url": url, **SMALL}) for url in urls]
    for answer in answers:
        assert answer["error_code"] == "DOWNLOAD_FAILED" and SECRET not in answer["error"], answer
    assert SECRET not in caplog.text


# ------------------------------------------------------------------------------------------ refused before the work


def test_decompression_bomb_is_refused_from_its_header(worker, setup):
    answer = run(worker, {"image": b64(setup["bomb"]), **SMALL})
    assert answer["error_code"] == "TOO_LARGE", answer
    assert answer["error"] == "input is 15000x15000 = 225,000,000 pixels per frame, over MAX_INPUT_PIXELS=1,000,000"
    assert worker.updates.sent == []


def test_probe_of_a_bomb_stays_small(setup):
    """Measured in a fresh process: opening the bomb would decode 675 MB of pixels before any check."""
    script = (
        "import sys; from seedvr import media; from worker_helpers import vm_hwm_bytes; import os\n"
        "before = vm_hwm_bytes(os.getpid())\n"
        "try:\n    media.probe(sys.argv[1], max_pixels=8192 * 8192)\nexcept media.MediaTooLarge as err:\n"
        "    print(err)\nprint(vm_hwm_bytes(os.getpid()) - before)\n"
    )
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, str(setup["bomb"])], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    refusal, growth = done.stdout.splitlines()
    assert refusal == "the picture is 15000x15000 = 225,000,000 pixels, over the limit of 67,108,864"
    assert int(growth) < 100 * 2**20, f"probe grew the process by {int(growth) / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: make_image(p / "a.jpg", width=70, height=50, fmt="jpg", exif_orientation=6), (70, 50)),
        (lambda p: make_image(p / "a.webp", width=70, height=50, fmt="webp"), (70, 50)),
        (lambda p: make_image(p / "a.png", width=70, height=50), (70, 50)),
    ],
)
def test_image_headers_give_the_size(tmp_path, make, expected):
    assert media._header_size(make(tmp_path)) == expected


def test_extreme_aspect_ratio_is_refused_by_the_output_side(worker, setup):
    answer = run(worker, {"image": b64(setup["thin"]), **SMALL})
    assert answer["error_code"] == "TOO_LARGE", answer
    assert "a side over MAX_OUTPUT_SIDE=1,024" in answer["error"] and "3000x4" in answer["error"]
    assert worker.updates.sent == []


@pytest.mark.parametrize(
    "fields, text",
    [
        ({"overlap_frames": 8}, "overlap_frames must be below 5 without batch_frames"),
        ({"overlap_frames": 200}, "overlap_frames must be below 5 without batch_frames"),
        ({"media_type": "video", "output_format": "png"}, "output_format png does not fit media_type video"),
        ({"media_type": "image", "output_format": "webm"}, "output_format webm does not fit media_type image"),
    ],
)
def test_inconsistent_options_are_refused_before_the_download(worker, fields, text):
    with HostileServer({"clip.mp4": b"never fetched"}) as server:
        answer = run(worker, {"media_url": server.url + "/file/clip.mp4", **fields})
        assert answer["error_code"] == "INVALID_INPUT" and text in answer["error"], answer
        assert server.hits == []


def test_small_overlap_without_batch_frames_is_still_valid():
    assert RestoreOptions(overlap_frames=4).overlap_frames == 4
    with pytest.raises(ValueError, match="give batch_frames too"):
        RestoreOptions(overlap_frames=5)


def test_a_bucket_that_fails_is_refused_before_the_pipeline(worker, setup):
    with s3_server("outputs") as env:
        cases = [
            {**_s3(env), "endpointUrl": f"http://127.0.0.1:{free_port()}"},  # nothing listens there
            {**_s3(env), "bucketName": "no-such-bucket"},
        ]
        answers = [run(worker, image_job(setup), s3Config=bucket) for bucket in cases]
    for answer in answers:
        assert answer["error_code"] == "UPLOAD_FAILED" and "checked before processing" in answer["error"], answer
    assert worker.updates.sent == []  # no window started
    assert_serves(worker, setup)


def test_a_broken_endpoint_bucket_refuses_uploads_early_but_not_inline_outputs(manager, setup, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    broken = BucketConfig(f"http://127.0.0.1:{free_port()}", "key", "secret", "outputs")
    updates = Updates()
    endpoint = Worker(manager, WorkerSettings(limits=LIMITS, bucket=broken), sender=updates)
    endpoint.jobs_dir = tmp_path
    refused = run(endpoint, image_job(setup, output_mode="upload"))
    assert refused["error_code"] == "UPLOAD_FAILED" and "checked before processing" in refused["error"], refused
    assert updates.sent == []
    assert run(endpoint, image_job(setup)).get("success") is True  # auto, small enough to return inline


def _s3(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpointUrl": env["BUCKET_ENDPOINT_URL"],
        "accessId": env["BUCKET_ACCESS_KEY_ID"],
        "accessSecret": env["BUCKET_SECRET_ACCESS_KEY"],
        "bucketName": env["BUCKET_NAME"],
    }


# ------------------------------------------------------------------------------------------ faults in the work


@pytest.mark.parametrize("where", ["dit", "vae"])
def test_out_of_memory_in_the_model(worker, setup, monkeypatch, where):
    """An OOM in the DiT or in the VAE decode: GPU_OOM with refresh_worker, the job's tensors freed, and the
    worker (until RunPod replaces it) still serves."""
    assert_serves(worker, setup)  # loads the model
    models = worker.manager.models
    held: list[weakref.ref] = []

    def out_of_memory(*args, **kwargs):
        activation = torch.empty(1 << 20)
        held.append(weakref.ref(activation))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    released = []
    monkeypatch.setattr(worker, "_release_gpu_memory", lambda: released.append(True))
    module, name = (models.dit, "forward") if where == "dit" else (models.vae, "decode")
    monkeypatch.setattr(module, name, out_of_memory)
    answer = run(worker, image_job(setup))
    assert answer["error_code"] == "GPU_OOM" and answer["refresh_worker"] is True, answer
    assert answer["error"].startswith("Processing failed: CUDA out of memory (try a smaller res_h/res_w")
    assert released and held and held[0]() is None  # nothing keeps the failed job's tensors alive
    monkeypatch.undo()
    assert_serves(worker, setup)


def test_an_unexpected_error_names_no_exception_class(worker, setup, monkeypatch):
    assert_serves(worker, setup)

    def broken(*args, **kwargs):
        raise KeyError("latent")

    monkeypatch.setattr(worker.manager.models.dit, "forward", broken)
    answer = run(worker, image_job(setup), job_id="j-internal")
    assert answer == {"error": "Processing failed: 'latent' (job j-internal)", "error_code": "INTERNAL"}


@pytest.mark.parametrize("name", ["input", "restored.png"])
def test_a_full_disk(worker, setup, monkeypatch, name):
    """ENOSPC writing the input (base64) or the output image: INTERNAL, no path of the worker in the message."""
    write_bytes = pathlib.Path.write_bytes

    def full(self, data):
        if self.name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    answer = run(worker, image_job(setup))
    assert answer == {"error": "Processing failed: no space left on the worker's disk", "error_code": "INTERNAL"}
    monkeypatch.undo()
    assert_serves(worker, setup)


def test_a_job_id_with_path_characters(worker, setup):
    with s3_server("outputs") as env:
        answer = run(worker, image_job(setup, output_mode="upload"), job_id="../../etc/x y", s3Config=_s3(env))
    assert answer["success"] is True, answer
    key = answer["media_urls"][0].split("/outputs/", 1)[1].split("?", 1)[0]
    assert key == "______etc_x_y/restored.png"


# ------------------------------------------------------------------------------------------ contract details


def test_health_before_any_load_reports_the_defaults(setup):
    fresh = Worker(ModelManager(ManagerConfig(setup["ckpt_dir"], setup["config_dir"])), WorkerSettings())
    health = fresh.run({"id": "h", "input": {"action": "health", "anything": [1, 2]}})
    assert (health["model_initialized"], health["model_type"]) == (False, None)
    assert (health["model_variant"], health["sp_size"]) == ("normal", 1)


def test_image_jobs_report_their_decode_time(worker, setup):
    answer = run(worker, image_job(setup))
    assert set(answer["processing_info"]["timings"]) >= {"fetch", "decode", "encode", "dit", "vae_decode", "write"}


def test_inline_counts_the_file_once_and_keeps_the_whole_answer_under_runpods_limit(tmp_path):
    path = tmp_path / "restored.mp4"
    path.write_bytes(bytes(3000))
    answer = media_out.deliver({"success": True}, path, "inline", 4100, None, "k", 60)
    assert answer["videos"] == answer["media"] and len(answer["media"][0]) == 4000
    path.write_bytes(bytes(8 << 20))  # 11.2 MB as base64, 22.4 MB with the videos copy
    with pytest.raises(WorkerError) as info:
        media_out.deliver({"success": True}, path, "inline", 64 << 20, None, "k", 60)
    assert info.value.code is ErrorCode.TOO_LARGE and "RunPod's result limit" in info.value.message


# ------------------------------------------------------------------------------------------ the live worker


def test_live_worker_memory_on_a_bomb(setup, tmp_path):
    """The local server (a subprocess) answers a 15000x15000 PNG with a refusal and stays small: its peak
    resident memory (VmHWM) grows by far less than the 675 MB of pixels the bomb unpacks to."""
    env = {
        "SEEDVR_CKPT_DIR": str(setup["ckpt_dir"]),
        "SEEDVR_CONFIG_DIR": str(setup["config_dir"]),
    }
    server = WorkerServer(env, tmp_path / "worker.log")
    try:
        server.wait_ready()
        assert server.runsync({"action": "health"})["status"] == "COMPLETED"
        idle = vm_hwm_bytes(server.process.pid)
        answer = server.runsync({"image": base64.b64encode(setup["bomb"].read_bytes()).decode()})
        grown = vm_hwm_bytes(server.process.pid) - idle
        assert answer["status"] == "FAILED" and "over MAX_INPUT_PIXELS=67,108,864" in answer["error"], answer
        assert grown < 200 * 2**20, f"the worker grew by {grown / 2**20:.0f} MiB"
        assert server.runsync({"action": "health"})["output"]["status"] == "healthy"
    finally:
        server.stop()


def test_every_worker_error_cuts_urls_to_their_host():
    error = WorkerError(ErrorCode.INTERNAL, f"failed on https://u:{SECRET}@example.com:8443/a/{SECRET}?sig={SECRET} twice")
    assert error.message == "failed on https://example.com:8443 twice"
    assert WorkerError(ErrorCode.INTERNAL, "see http://[bad/x").message == "see http://?"
