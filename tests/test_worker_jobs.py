"""The worker in-process with the real pipeline and the tiny fixture models (tests/tiny.py): error codes of
every kind of bad input (the local HTTP server drops `error_code`, so codes are checked here), model swaps,
cancellation, progress, temporary folders, determinism, bucket delivery."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import tempfile
import threading
import weakref
from pathlib import Path

import av
import pytest
import torch

from mediagen import make_image, make_video
from tiny import write_tiny_setup
from worker_helpers import b64, fetch, job_worker, s3_server

from seedvr import checkpoints, manager as manager_module
from seedvr.manager import ManagerConfig, ModelManager, ModelSpec
from seedvr.worker.service import Worker
from seedvr.worker.settings import BucketConfig, Limits, WorkerSettings

SMALL = {"res_h": 64, "res_w": 96}  # 48x64 input -> 68x90 output: one DiT window, seconds on a CPU
LIMITS = Limits(max_input_bytes=200_000, max_frames=12, max_output_pixels=256 * 256, download_timeout=10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker_jobs")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    media = root / "media"
    media.mkdir()
    return {
        "config_dir": config_dir,
        "ckpt_dir": ckpt_dir,
        "video": make_video(media / "clip.mp4", frames=9, width=64, height=48),
        "long": make_video(media / "long.mp4", frames=13, width=64, height=48, with_audio=False),
        "image": make_image(media / "still.png", width=64, height=48),
        "root": root,
    }


@pytest.fixture(scope="module")
def manager(setup):
    return ModelManager(ManagerConfig(setup["ckpt_dir"], setup["config_dir"]))


@pytest.fixture()
def worker(manager, tmp_path, monkeypatch):
    """A worker whose job folders go to tmp_path/jobs, so a test can check they are all removed."""
    return job_worker(manager, tmp_path, monkeypatch, WorkerSettings(limits=LIMITS, progress_interval=0.0))


def job_dirs(folder: Path) -> list[Path]:
    """The worker's per-job folders left behind (torch keeps its own caches in the same temp folder)."""
    return [p for p in folder.iterdir() if p.name.startswith("seedvr-")]


def run(worker: Worker, job_input: dict, **job) -> dict:
    return worker.run({"id": "test-job", "input": job_input, **job})


def frames_of(data: bytes, tmp_path: Path, name: str = "out.mp4"):
    path = tmp_path / name
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# ------------------------------------------------------------------------------------------ bad input


def _bad_inputs(setup) -> list[tuple[str, dict, str, str]]:
    video = b64(setup["video"])
    return [
        ("bad base64", {"media": "@@@not-base64@@@"}, "INVALID_INPUT", "Invalid base64 media data"),
        (
            "not media",
            {"media": base64.b64encode(b"hello, not a video" * 50).decode()},
            "UNSUPPORTED_MEDIA",
            "Unsupported media: could not decode",
        ),
        ("empty", {"video": ""}, "INVALID_INPUT", "video is empty"),
        (
            "unknown action",
            {"action": "enhance", "media": video},
            "INVALID_INPUT",
            "action must be one of health, initialize, restore",
        ),
        ("no media", {"action": "restore", **SMALL}, "INVALID_INPUT", "No video data provided"),
        (
            "string size",
            {"media": video, "res_h": "64"},
            "INVALID_INPUT",
            "res_h must be an integer between 64 and 4096",
        ),
        (
            "size too small",
            {"media": video, "res_w": 32},
            "INVALID_INPUT",
            "res_w must be an integer between 64 and 4096",
        ),
        ("bool as number", {"media": video, "crf": True}, "INVALID_INPUT", "crf must be an integer between 0 and 51"),
        (
            "sharp on 3B",
            {"media": video, "model_type": "seedvr2_3b", "model_variant": "sharp"},
            "INVALID_INPUT",
            "model_variant sharp exists for seedvr2_7b only",
        ),
        ("unknown field", {"media": video, "strength": 2}, "INVALID_INPUT", "unknown field 'strength'"),
        (
            "bytes over limit",
            {"media": base64.b64encode(os.urandom(210_000)).decode()},
            "TOO_LARGE",
            "MAX_INPUT_BYTES=200,000",
        ),
        (
            "frames over limit",
            {"media": b64(setup["long"]), **SMALL},
            "TOO_LARGE",
            "input has 13 frames, over MAX_FRAMES=12",
        ),
        (
            "pixels over limit",
            {"media": video, "res_h": 512, "res_w": 512},
            "TOO_LARGE",
            "over MAX_OUTPUT_PIXELS=65,536",
        ),
        (
            "private URL",
            {"media_url": "http://127.0.0.1:9/clip.mp4"},
            "INVALID_INPUT",
            "media_url must point to a public address",
        ),
        (
            "unresolvable URL",
            {"media_url": "http://no-such-host.invalid/clip.mp4"},
            "DOWNLOAD_FAILED",
            "media_url download failed: cannot resolve host",
        ),
        (
            "ftp URL",
            {"media_url": "ftp://example.com/clip.mp4"},
            "INVALID_INPUT",
            "media_url must be an http or https URL",
        ),
        (
            "format of other kind",
            {"media": video, "output_format": "png", **SMALL},
            "INVALID_INPUT",
            "output_format png does not fit a video: use one of mp4, webm, mov",
        ),
        (
            "media_type mismatch",
            {"image": video, "media_type": "image", **SMALL},
            "UNSUPPORTED_MEDIA",
            "media_type is image but the input is a video",
        ),
        (
            "upload without bucket",
            {"media": video, "output_mode": "upload", **SMALL},
            "INVALID_INPUT",
            "output_mode upload needs a bucket: no bucket is configured",
        ),
        (
            "sp_size over GPUs",
            {"media": video, "sp_size": 2},
            "INVALID_INPUT",
            "sp_size must be an integer between 1 and 1",
        ),
        (
            "batch not 4n+1",
            {"media": video, "batch_frames": 6},
            "INVALID_INPUT",
            "batch_frames must be an integer of the form 4n+1",
        ),
    ]


def test_bad_inputs_give_one_string_error_and_the_worker_still_serves(worker, setup, tmp_path):
    cases = _bad_inputs(setup)
    assert len(cases) >= 15
    for name, job_input, code, text in cases:
        answer = run(worker, job_input)
        assert set(answer) == {"error", "error_code"}, (name, answer)
        assert isinstance(answer["error"], str) and "Traceback" not in answer["error"], name
        assert answer["error_code"] == code, (name, answer)
        assert text in answer["error"], (name, answer["error"])
    assert job_dirs(worker.jobs_dir) == []
    answer = run(worker, {"media": b64(setup["video"]), **SMALL})
    assert answer["success"] is True and answer["resolution"] == "90x68"
    assert job_dirs(worker.jobs_dir) == []


def test_missing_checkpoint_names_file_and_command(setup, tmp_path):
    empty = tmp_path / "ckpts"
    empty.mkdir()
    worker = Worker(ModelManager(ManagerConfig(empty, setup["config_dir"])), WorkerSettings(limits=LIMITS))
    health = run(worker, {"action": "health"})
    assert health["checkpoints"] == {"seedvr2_3b": False, "seedvr2_7b": False, "seedvr2_7b_sharp": False, "vae": False}
    assert health["model_initialized"] is False and health["model_type"] is None
    answer = run(worker, {"media": b64(setup["video"])})
    assert answer["error_code"] == "MODEL_NOT_READY"
    assert answer["error"] == (
        f"Model not initialized: checkpoint {empty / 'seedvr2_ema_3b.pth'} not found "
        f"(run scripts/download_models.py --model 3b --dir {empty})"
    )
    answer = run(worker, {"action": "initialize", "model_type": "seedvr2_7b", "model_variant": "sharp"})
    assert answer["error_code"] == "MODEL_NOT_READY" and "seedvr2_ema_7b_sharp.pth not found" in answer["error"]
    assert "--model 7b-sharp" in answer["error"]


def test_corrupt_checkpoint_is_model_not_ready(setup, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("ema_vae.pth", "pos_emb.pt", "neg_emb.pt", "seedvr2_ema_7b.pth"):
        (ckpts / name).symlink_to(setup["ckpt_dir"] / name)
    # the 7B file where the 3B one belongs: right name, wrong architecture
    (ckpts / "seedvr2_ema_3b.pth").symlink_to(setup["ckpt_dir"] / "seedvr2_ema_7b.pth")
    worker = Worker(ModelManager(ManagerConfig(ckpts, setup["config_dir"])), WorkerSettings(limits=LIMITS))
    answer = run(worker, {"action": "initialize"})
    assert answer["error_code"] == "MODEL_NOT_READY" and "seedvr2_ema_3b.pth does not fit" in answer["error"]
    assert worker.manager.models is None
    assert run(worker, {"action": "initialize", "model_type": "seedvr2_7b"})["ready"] is True


# ------------------------------------------------------------------------------------------ models


def test_swap_frees_old_dit_first_and_keeps_the_vae(manager, worker, monkeypatch):
    assert run(worker, {"action": "initialize", "model_type": "seedvr2_3b"})["ready"] is True
    vae = manager.models.vae
    old_dit = weakref.ref(manager.models.dit)
    alive_at_load: list[bool] = []
    real_load = checkpoints.load_weights

    def spy(module, path, *args, **kwargs):
        gc.collect()
        alive_at_load.append(old_dit() is not None)
        return real_load(module, path, *args, **kwargs)

    monkeypatch.setattr(manager_module.checkpoints, "load_weights", spy)
    answer = run(worker, {"action": "initialize", "model_type": "seedvr2_7b"})
    assert answer == {
        "message": "Model seedvr2_7b (normal) initialized successfully",
        "model_type": "seedvr2_7b",
        "model_variant": "normal",
        "sp_size": 1,
        "ready": True,
        "load_seconds": answer["load_seconds"],
    }
    assert answer["load_seconds"] > 0
    assert alive_at_load == [False]  # one load (the DiT only), after the 3B DiT was gone
    assert manager.models.vae is vae
    again = run(worker, {"action": "initialize", "model_type": "seedvr2_7b"})
    assert again["load_seconds"] == 0.0 and len(alive_at_load) == 1


def test_restore_follows_resident_model_and_sharp_changes_the_result(manager, worker, setup, tmp_path):
    assert run(worker, {"action": "initialize", "model_type": "seedvr2_7b"})["ready"]
    normal = run(worker, {"media": b64(setup["video"]), **SMALL})
    assert (normal["model_type"], normal["model_variant"]) == ("seedvr2_7b", "normal")
    sharp = run(worker, {"media": b64(setup["video"]), "model_variant": "sharp", **SMALL})
    assert (sharp["model_type"], sharp["model_variant"]) == ("seedvr2_7b", "sharp")
    assert manager.resident == ModelSpec("seedvr2_7b", "sharp", 1)
    a = frames_of(base64.b64decode(normal["media"][0]), tmp_path, "a.mp4")
    b = frames_of(base64.b64decode(sharp["media"][0]), tmp_path, "b.mp4")
    assert len(a) == len(b) == 9
    assert max(abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a, b)) > 10
    health = run(worker, {"action": "health"})
    assert (health["model_type"], health["model_variant"], health["sp_size"]) == ("seedvr2_7b", "sharp", 1)
    three = run(worker, {"media": b64(setup["video"]), "model_type": "seedvr2_3b", **SMALL})
    assert (three["model_type"], three["model_variant"]) == ("seedvr2_3b", "normal")


# ------------------------------------------------------------------------------------------ restore


def test_same_seed_same_output_other_seed_differs(worker, setup):
    job = {"image": b64(setup["image"]), "model_type": "seedvr2_3b", **SMALL}
    first, second = run(worker, job), run(worker, job)
    assert first["media"] == second["media"] and first["media_type"] == "image"
    other = run(worker, {**job, "seed": 7})
    assert other["media"] != first["media"]
    assert first["processing_info"]["seed"] == 666 and other["processing_info"]["seed"] == 7


def test_progress_updates_come_from_the_pipeline(worker, setup):
    answer = run(
        worker,
        {"media": b64(setup["video"]), "model_type": "seedvr2_3b", "batch_frames": 5, "overlap_frames": 1, **SMALL},
    )
    assert answer["success"] is True, answer
    updates = worker.updates.sent
    assert {u["windows"] for u in updates} == {2}
    assert {u["stage"] for u in updates} >= {"encode", "dit", "vae_decode"}
    assert all(
        set(u) == {"stage", "window", "windows", "frames_done", "frames_total", "percent", "eta_seconds"}
        for u in updates
    )
    assert updates[-1]["frames_total"] == 9 and max(u["percent"] for u in updates) >= 44.4


def test_cancel_flag_stops_at_the_next_window(worker, setup):
    cancel = threading.Event()
    worker.updates.on_update = lambda update: cancel.set() if update["window"] == 1 else None
    job = {
        "id": "c1",
        "input": {
            "media": b64(setup["video"]),
            "model_type": "seedvr2_3b",
            "batch_frames": 5,
            "overlap_frames": 1,
            **SMALL,
        },
    }
    answer = worker.run(job, cancel)
    assert answer["error_code"] == "CANCELLED" and "Job cancelled" in answer["error"]
    assert max(u["window"] for u in worker.updates.sent) == 1
    assert job_dirs(worker.jobs_dir) == []


def test_async_cancel_stops_the_thread_and_frees_the_worker(worker, setup):
    started = threading.Event()
    worker.updates.on_update = lambda update: started.set()
    job = {
        "id": "c2",
        "input": {
            "media": b64(setup["video"]),
            "model_type": "seedvr2_3b",
            "batch_frames": 5,
            "overlap_frames": 1,
            **SMALL,
        },
    }

    async def cancel_midway():
        task = asyncio.create_task(worker.handle(job))
        while not started.is_set():
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    # The thread finishes its current window, sees the flag, cleans up and releases the GPU lock.
    assert worker._gpu.acquire(timeout=120)
    worker._gpu.release()
    assert max(u["window"] for u in worker.updates.sent) <= 2
    assert job_dirs(worker.jobs_dir) == []
    assert run(worker, {"action": "health"})["status"] == "healthy"


def test_scale_and_fps(worker, setup, tmp_path):
    answer = run(worker, {"video": b64(setup["video"]), "model_type": "seedvr2_3b", "scale": 1.5, "fps": 12.5})
    assert answer["resolution"] == "96x72"
    info = answer["processing_info"]
    assert info["fps"] == 12.5 and info["frames"] == 9 and info["input_resolution"] == "64x48"
    path = tmp_path / "scaled.mp4"
    path.write_bytes(base64.b64decode(answer["videos"][0]))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (96, 72, 12.5)


def test_large_output_goes_to_the_bucket(manager, setup, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with s3_server("outputs") as env:
        bucket = BucketConfig(
            env["BUCKET_ENDPOINT_URL"], env["BUCKET_ACCESS_KEY_ID"], env["BUCKET_SECRET_ACCESS_KEY"], "outputs"
        )
        worker = Worker(manager, WorkerSettings(limits=Limits(inline_max_bytes=20_000), bucket=bucket))
        answer = run(worker, {"image": b64(setup["image"]), "model_type": "seedvr2_3b", **SMALL})
        assert "media" not in answer and answer["resolution"] == "90x68"
        body, content_type = fetch(answer["media_urls"][0])
        assert content_type == "image/png" and body.startswith(b"\x89PNG")
        inline = run(
            worker, {"image": b64(setup["image"]), "model_type": "seedvr2_3b", "output_mode": "inline", **SMALL}
        )
        assert inline["error_code"] == "TOO_LARGE" and "INLINE_MAX_BYTES=20,000" in inline["error"]
        # A job's s3Config wins over the environment's bucket.
        job_bucket = {
            "endpointUrl": env["BUCKET_ENDPOINT_URL"],
            "accessId": "k",
            "accessSecret": "s",
            "bucketName": "elsewhere",
        }
        failed = run(worker, {"image": b64(setup["image"]), "model_type": "seedvr2_3b", **SMALL}, s3Config=job_bucket)
        assert failed["error_code"] == "UPLOAD_FAILED" and "'elsewhere'" in failed["error"]
    assert job_dirs(tmp_path) == []


def test_default_model_and_variant_come_from_the_environment(setup, monkeypatch):
    monkeypatch.setenv("SEEDVR_CKPT_DIR", str(setup["ckpt_dir"]))
    monkeypatch.setenv("SEEDVR_CONFIG_DIR", str(setup["config_dir"]))
    monkeypatch.setenv("SEEDVR_MODEL", "seedvr2_7b")
    monkeypatch.setenv("SEEDVR_VARIANT", "sharp")
    monkeypatch.setenv("SEEDVR_DOWNLOAD_MODELS", "7b-sharp,3b")
    config = ManagerConfig.from_env()
    assert config.download_models == ("7b-sharp", "3b")
    worker = Worker(ModelManager(config), WorkerSettings(limits=LIMITS))
    answer = run(worker, {"action": "initialize"})
    assert (answer["model_type"], answer["model_variant"]) == ("seedvr2_7b", "sharp")
    # another model starts from its normal variant
    assert run(worker, {"image": b64(setup["image"]), "model_type": "seedvr2_3b", **SMALL})["model_variant"] == "normal"
    for name, value, message in [
        ("SEEDVR_MODEL", "seedvr2_3b", "SEEDVR_VARIANT must be normal, or sharp with SEEDVR_MODEL=seedvr2_7b"),
        ("SEEDVR_MODEL", "sdxl", "SEEDVR_MODEL must be one of seedvr2_3b, seedvr2_7b"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=message):
            ManagerConfig.from_env()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_worker_reports_the_gpu_and_maps_a_real_oom(setup):
    manager = ModelManager(ManagerConfig(setup["ckpt_dir"], setup["config_dir"]))
    assert (manager.device.type, manager.dtype) == ("cuda", torch.bfloat16)
    worker = Worker(manager, WorkerSettings(limits=LIMITS))
    health = run(worker, {"action": "health"})
    assert (
        health["cuda_available"] is True
        and health["gpu_name"]
        and health["gpu_memory"] >= health["gpu_memory_free"] > 0
    )
    answer = run(worker, {"media": b64(setup["video"]), **SMALL})
    assert answer["success"] is True and answer["resolution"] == "90x68", answer
    torch.cuda.set_per_process_memory_fraction(1e-4)  # the allocator refuses from now on: a genuine OOM
    try:
        answer = run(worker, {"media": b64(setup["video"]), "res_h": 1024, "res_w": 1024})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert answer["error_code"] == "GPU_OOM" and answer["refresh_worker"] is True
    assert answer["error"].startswith("Processing failed: CUDA out of memory")
    assert run(worker, {"media": b64(setup["video"]), **SMALL})["success"] is True
