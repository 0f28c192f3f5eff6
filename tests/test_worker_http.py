"""The worker as a client sees it: `python handler.py --rp_serve_api` in a subprocess, talked to over HTTP,
running the real pipeline on the tiny fixture models (tests/tiny.py). One server for the whole module.

Beside it, on 127.0.0.1: a file server for `media_url` and a moto S3 server for uploads.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest

from mediagen import make_image, make_video
from tiny import write_tiny_setup
from worker_helpers import ROOT, WorkerServer, b64, fetch, file_server, free_port, s3_server

SMALL = {"res_h": 64, "res_w": 96}
HEALTH_KEYS = {
    "status",
    "model_initialized",
    "model_type",
    "model_variant",
    "sp_size",
    "cuda_available",
    "gpu_name",
    "gpu_memory",
    "gpu_memory_free",
    "checkpoints",
    "weights",
    "version",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker_http")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    media = root / "media"
    media.mkdir()
    files = {
        "video": make_video(media / "clip.mp4", frames=9, width=64, height=48, fps=Fraction(25)),
        "long": make_video(media / "long.mp4", frames=13, width=64, height=48, with_audio=False),
        "image": make_image(media / "still.png", width=64, height=48),
    }
    routes = {"/clip.mp4": (files["video"].read_bytes(), {})}
    with s3_server("restored") as bucket_env, file_server(routes) as files_url:
        server = WorkerServer(
            {
                "SEEDVR_CKPT_DIR": str(ckpt_dir),
                "SEEDVR_CONFIG_DIR": str(config_dir),
                "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS": "true",
                "MAX_FRAMES": "12",
                "MAX_INPUT_BYTES": "200000",
                "MAX_OUTPUT_PIXELS": str(256 * 256),
                **bucket_env,
            },
            root / "worker.log",
        )
        try:
            server.wait_ready()
            yield {"server": server, "files": files, "files_url": files_url, "ckpt_dir": ckpt_dir, "root": root}
        finally:
            server.stop()


def ok(server: WorkerServer, job_input: dict) -> dict:
    answer = server.runsync(job_input)
    assert answer["status"] == "COMPLETED", (answer, server.log_tail())
    return answer["output"]


def failed(server: WorkerServer, job_input: dict) -> str:
    answer = server.runsync(job_input)
    assert answer["status"] == "FAILED", answer
    assert isinstance(answer["error"], str)
    return answer["error"]


def decode_video(data: bytes, path: Path) -> tuple[list, av.VideoStream, bool]:
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return frames, stream, bool(container.streams.audio)


def test_health_before_any_model(env):
    health = ok(env["server"], {"action": "health"})
    assert set(health) == HEALTH_KEYS
    assert health["status"] == "healthy" and health["model_initialized"] is False and health["model_type"] is None
    assert health["checkpoints"] == {"seedvr2_3b": True, "seedvr2_7b": True, "seedvr2_7b_sharp": True, "vae": True}
    assert health["cuda_available"] is False and health["gpu_memory"] == 0 and health["version"] == "0.1.0"
    assert health["weights"]["state"] == "ready" and health["weights"]["waiting_for"] == []


def test_initialize_each_model_and_swap(env):
    server = env["server"]
    for model_type, variant in [("seedvr2_3b", "normal"), ("seedvr2_7b", "normal"), ("seedvr2_7b", "sharp")]:
        answer = ok(server, {"action": "initialize", "model_type": model_type, "model_variant": variant})
        assert answer["message"] == f"Model {model_type} ({variant}) initialized successfully"
        assert (answer["model_type"], answer["model_variant"], answer["sp_size"], answer["ready"]) == (
            model_type,
            variant,
            1,
            True,
        )
        assert answer["load_seconds"] > 0
        health = ok(server, {"action": "health"})
        assert (health["model_initialized"], health["model_type"], health["model_variant"]) == (
            True,
            model_type,
            variant,
        )
    assert (
        ok(server, {"action": "initialize", "model_type": "seedvr2_7b", "model_variant": "sharp"})["load_seconds"]
        == 0.0
    )
    back = ok(server, {"action": "initialize"})  # defaults: SEEDVR_MODEL unset -> 3B, normal
    assert (back["model_type"], back["model_variant"]) == ("seedvr2_3b", "normal") and back["load_seconds"] > 0


def test_restore_video_keeps_frames_fps_audio_and_aspect(env, tmp_path):
    answer = ok(env["server"], {"video": b64(env["files"]["video"]), "model_type": "seedvr2_3b", **SMALL})
    assert answer["success"] is True and answer["media_type"] == "video"
    assert answer["videos"] == answer["media"] and len(answer["media"]) == 1
    assert (answer["model_type"], answer["model_variant"]) == ("seedvr2_3b", "normal")
    frames, stream, has_audio = decode_video(base64.b64decode(answer["media"][0]), tmp_path / "out.mp4")
    height, width = frames[0].shape[:2]
    assert answer["resolution"] == f"{width}x{height}" == "90x68"
    assert abs(width / height - 64 / 48) < 0.02
    assert len(frames) == 9 and stream.average_rate == 25 and has_audio
    info = answer["processing_info"]
    assert {
        k: info[k]
        for k in (
            "seed",
            "cfg_scale",
            "sample_steps",
            "sequence_parallel_size",
            "input_resolution",
            "frames",
            "fps",
            "color_fix",
        )
    } == {
        "seed": 666,
        "cfg_scale": 1.0,
        "sample_steps": 1,
        "sequence_parallel_size": 1,
        "input_resolution": "64x48",
        "frames": 9,
        "fps": 25.0,
        "color_fix": "wavelet",
    }
    assert {"fetch", "encode", "dit", "vae_decode", "total"} <= set(info["timings"])
    assert info["timings"]["total"] >= info["timings"]["dit"] > 0


def test_restore_image_returns_png(env, tmp_path):
    answer = ok(
        env["server"],
        {"image": "data:image/png;base64," + b64(env["files"]["image"]), "model_type": "seedvr2_3b", **SMALL},
    )
    data = base64.b64decode(answer["media"][0])
    assert answer["media_type"] == "image" and data.startswith(b"\x89PNG\r\n\x1a\n")
    path = tmp_path / "out.png"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert answer["resolution"] == f"{frame.width}x{frame.height}" == "90x68"
    assert answer["processing_info"]["fps"] is None and answer["processing_info"]["frames"] == 1


def test_run_then_status(env):
    server = env["server"]
    queued = server.post("/run", {"input": {"media": b64(env["files"]["image"]), "model_type": "seedvr2_3b", **SMALL}})
    assert queued["status"] == "IN_PROGRESS" and queued["id"]
    done = server.post(f"/status/{queued['id']}")
    assert done["status"] == "COMPLETED" and done["output"]["resolution"] == "90x68"
    assert server.post(f"/status/{queued['id']}")["error"] == "Job ID not found"


def test_media_url_is_downloaded(env):
    answer = ok(env["server"], {"media_url": env["files_url"] + "/clip.mp4", "model_type": "seedvr2_3b", **SMALL})
    assert answer["media_type"] == "video" and answer["processing_info"]["frames"] == 9


def test_upload_mode_returns_a_presigned_url(env, tmp_path):
    answer = ok(
        env["server"],
        {"media": b64(env["files"]["video"]), "model_type": "seedvr2_3b", "output_mode": "upload", **SMALL},
    )
    assert "media" not in answer and "videos" not in answer and len(answer["media_urls"]) == 1
    body, content_type = fetch(answer["media_urls"][0])
    assert content_type == "video/mp4"
    frames, _, _ = decode_video(body, tmp_path / "uploaded.mp4")
    assert len(frames) == 9 and answer["resolution"] == "90x68"


def test_bad_inputs_fail_with_one_string_and_the_worker_keeps_serving(env):
    server, files = env["server"], env["files"]
    video = b64(files["video"])
    closed_port = free_port()
    cases = [
        ({"media": "%%%"}, "Invalid base64 media data"),
        (
            {"video": base64.b64encode(b"plain text, not a video" * 20).decode()},
            "Unsupported media: could not decode the input as a video or an image",
        ),
        ({"media": ""}, "media is empty"),
        ({"action": "upscale"}, "action must be one of health, initialize, restore (got 'upscale')"),
        ({"res_h": 720}, "No video data provided: give media, video, image or media_url"),
        ({"media": video, "res_h": "720"}, "res_h must be an integer between 64 and 4096"),
        ({"media": video, "res_w": 8192}, "res_w must be an integer between 64 and 4096"),
        ({"media": video, "seed": 1.5}, "seed must be an integer between 0 and 4294967295"),
        ({"media": video, "keep_audio": "no"}, "keep_audio must be true or false"),
        (
            {"media": video, "model_type": "seedvr2_3b", "model_variant": "sharp"},
            "model_variant sharp exists for seedvr2_7b only",
        ),
        ({"media": video, "model_type": "seedvr2_13b"}, "model_type must be one of seedvr2_3b, seedvr2_7b"),
        ({"media": base64.b64encode(bytes(300_000)).decode()}, "over the input limit MAX_INPUT_BYTES=200,000"),
        ({"media": b64(files["long"]), **SMALL}, "input has 13 frames, over MAX_FRAMES=12"),
        ({"media": video, "res_h": 512, "res_w": 512}, "over MAX_OUTPUT_PIXELS=65,536"),
        ({"media_url": f"http://127.0.0.1:{closed_port}/clip.mp4"}, "media_url download failed: could not connect"),
        ({"media_url": env["files_url"] + "/missing.mp4"}, "media_url download failed: HTTP 404"),
        ({"media_url": "gopher://example.com/clip"}, "media_url must be an http or https URL"),
        ({"media": video, "output_format": "webp", **SMALL}, "output_format webp does not fit a video"),
        ({"media": video, "media_type": "image", **SMALL}, "media_type is image but the input is a video"),
        ({"media": video, "sp_size": 4}, "sp_size must be an integer between 1 and 1"),
        ({"media": video, "fps": 0}, "fps must be a number between 0.1 and 240"),
    ]
    for job_input, text in cases:
        error = failed(server, job_input)
        assert text in error, (job_input.keys(), error)
        assert "Traceback" not in error and "error_type" not in error
    assert ok(server, {"action": "health"})["status"] == "healthy"
    assert ok(server, {"media": video, "model_type": "seedvr2_3b", **SMALL})["success"] is True


def test_missing_checkpoint_then_recovery(env):
    server, sharp = env["server"], env["ckpt_dir"] / "seedvr2_ema_7b_sharp.pth"
    hidden = sharp.with_name("hidden.pth")
    sharp.rename(hidden)
    try:
        assert ok(server, {"action": "health"})["checkpoints"]["seedvr2_7b_sharp"] is False
        error = failed(server, {"action": "initialize", "model_type": "seedvr2_7b", "model_variant": "sharp"})
        assert error.startswith(
            f"Model not initialized: checkpoint {sharp} not found (run scripts/download_models.py --model 7b-sharp"
        )
    finally:
        hidden.rename(sharp)
    assert ok(server, {"action": "initialize", "model_type": "seedvr2_7b", "model_variant": "sharp"})["ready"] is True


def client(env, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/client.py", *args, "--url", env["server"].url, "--poll", "0.2"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_client_script_against_the_local_server(env, tmp_path):
    target = tmp_path / "restored.mp4"
    result = client(
        env,
        str(env["files"]["video"]),
        "-o",
        str(target),
        "--res-h",
        "64",
        "--res-w",
        "96",
        "--model-type",
        "seedvr2_3b",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resolution"] == "90x68" and f"saved {target}" in result.stderr
    frames, _, has_audio = decode_video(target.read_bytes(), tmp_path / "copy.mp4")
    assert len(frames) == 9 and has_audio
    health = client(env, "--action", "health")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "healthy"
    bad = client(env, str(env["files"]["video"]), "--res-h", "10")
    assert bad.returncode == 1 and "res_h must be an integer between 64 and 4096" in bad.stderr
