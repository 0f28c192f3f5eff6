"""The worker's own layers, each against real things: request validation, base64 and URL transport (a real
HTTP server on loopback), inline/upload delivery (a real S3-compatible server), progress throttling, errors."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedvr.worker.errors import ErrorCode, WorkerError, classify_failure, error_response
from seedvr.worker.media_in import download, write_base64
from seedvr.worker.media_out import bucket_problem, deliver
from seedvr.worker.progress import ProgressReporter
from seedvr.worker.schema import parse_request
from seedvr.worker.settings import BucketConfig, Limits, WorkerSettings
from worker_helpers import fetch, file_server, s3_server


def _error(payload) -> WorkerError:
    with pytest.raises(WorkerError) as info:
        parse_request(payload)
    return info.value


# ------------------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"media": "x", "res_h": 10}, "res_h must be an integer between 64 and 4096"),
        ({"media": "x", "res_w": 5000}, "res_w must be an integer between 64 and 4096"),
        ({"media": "x", "res_h": "720"}, "res_h must be an integer between 64 and 4096"),
        ({"media": "x", "res_h": 720.5}, "res_h must be an integer between 64 and 4096"),
        ({"media": "x", "seed": -1}, "seed must be an integer between 0 and 4294967295"),
        ({"media": "x", "batch_frames": 8}, "batch_frames must be an integer of the form 4n+1 between 1 and 1001"),
        ({"media": "x", "batch_frames": 9, "overlap_frames": 9}, "overlap_frames must be smaller than batch_frames"),
        ({"media": "x", "keep_audio": "yes"}, "keep_audio must be true or false"),
        ({"media": "x", "color_fix": "auto"}, "color_fix must be one of wavelet, adain, none"),
        ({"media": "x", "output_mode": "s3"}, "output_mode must be one of auto, inline, upload"),
        ({"media": "x", "scale": 0.1}, "scale must be a number between 0.25 and 16"),
        ({"media": "x", "scale": 2, "res_h": 720}, "give either scale or res_h/res_w, not both"),
        (
            {"media": "x", "model_type": "seedvr2_3b", "model_variant": "sharp"},
            "model_variant sharp exists for seedvr2_7b only",
        ),
        ({"media": "x", "model_type": "seedvr3"}, "model_type must be one of seedvr2_3b, seedvr2_7b"),
        ({"media": 12}, "media must be a base64 string"),
        ({"media": "x", "image": "y"}, "give only one of media, video, image, media_url (got media, image)"),
        ({"media_url": "file:///etc/passwd"}, "media_url must be an http or https URL"),
        ({"media_url": "ftp://example.com/clip.mp4"}, "media_url must be an http or https URL"),
        (
            {"res_h": 720},
            "No video data provided: give media, video, image or media_url, or an action (one of health, "
            "initialize, restore, plan)",
        ),
        ({"action": "initialize", "sp_size": 0}, "sp_size must be an integer between 1 and 64"),
        ({"action": "restore"}, "No video data provided: give media, video, image or media_url"),
        ({"action": "upscale"}, "action must be one of health, initialize, restore, plan (got 'upscale')"),
        ("just a string", "input must be a JSON object"),
        ({"media": "x", "windows": [3, 3]}, "windows must be [first, stop]: window indices of the plan, 0 <= first < stop"),
        ({"media": "x", "windows": [-1, 2]}, "windows must be [first, stop]: window indices of the plan, 0 <= first < stop"),
        ({"media": "x", "windows": [0, 1, 2]}, "windows must be [first, stop]: window indices of the plan, 0 <= first < stop"),
        ({"media": "x", "windows": [0, 1], "output_format": "mp4"}, "output_format does not apply to windows: a window part is always an npz file"),
        ({"action": "plan", "media": "x", "windows": [0, 1]}, "windows belongs to restore: a plan covers the whole input"),
        ({"action": "plan"}, "No video data provided: give media, video, image or media_url"),
        ({"media": "x", "vae_tile": 100}, "vae_tile must be 0 (never tile) or a multiple of 16 between 64 and 4096"),
        ({"media": "x", "vae_tile": 48}, "vae_tile must be 0 (never tile) or a multiple of 16 between 64 and 4096"),
        ({"media": "x", "scene_cuts": 0}, "scene_cuts must be true or false"),
    ],
)
def test_invalid_requests_name_field_and_rule(payload, message):
    error = _error(payload)
    assert error.code is ErrorCode.INVALID_INPUT
    assert error.message == message


def test_unknown_field_is_refused_with_the_valid_ones():
    error = _error({"media": "x", "resolution": 720})
    assert error.message.startswith("unknown field 'resolution' (valid fields: action, model_type,")
    assert "res_h" in error.message


def test_several_errors_are_one_string():
    error = _error({"media": "x", "res_h": 1, "crf": 99})
    assert error.message == "res_h must be an integer between 64 and 4096; crf must be an integer between 0 and 51"


def test_defaults_and_implicit_restore():
    request = parse_request({"video": "AAAA"})
    assert (request.res_h, request.res_w, request.seed, request.color_fix) == (1280, 720, 666, "wavelet")
    assert request.media_field == "video" and request.output_mode == "auto" and request.keep_audio is True
    assert parse_request({"action": "health", "anything": 1}).__class__.__name__ == "HealthRequest"


def test_missing_action_without_media_lists_actions():
    assert "health, initialize, restore" in _error({"res_h": 720}).message


# ------------------------------------------------------------------------------------------ base64


def test_base64_with_and_without_data_uri(tmp_path):
    raw = bytes(range(256)) * 10
    text = base64.b64encode(raw).decode()
    assert write_base64(text, "media", tmp_path / "a", 10_000).read_bytes() == raw
    uri = "data:video/mp4;base64," + text
    assert write_base64(uri, "video", tmp_path / "b", 10_000).read_bytes() == raw
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert write_base64(wrapped, "media", tmp_path / "c", 10_000).read_bytes() == raw


@pytest.mark.parametrize(
    "data, code, start",
    [
        ("not base64!!", ErrorCode.INVALID_INPUT, "Invalid base64 video data"),
        ("QUJD=X", ErrorCode.INVALID_INPUT, "Invalid base64 video data"),
        ("QUJD!!!!", ErrorCode.INVALID_INPUT, "Invalid base64 video data"),  # a lenient decoder drops the !
        ("", ErrorCode.INVALID_INPUT, "video is empty"),
        ("data:video/mp4,QUJD", ErrorCode.INVALID_INPUT, "Invalid base64 video data"),
    ],
)
def test_bad_base64(tmp_path, data, code, start):
    with pytest.raises(WorkerError) as info:
        write_base64(data, "video", tmp_path / "in", 1000)
    assert info.value.code is code and info.value.message.startswith(start)


def test_base64_limit_is_checked_before_decoding(tmp_path):
    # 4000 characters of invalid base64: a decode would fail, so TOO_LARGE proves the length came first.
    with pytest.raises(WorkerError) as info:
        write_base64("!" * 4000, "media", tmp_path / "in", 1000)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "MAX_INPUT_BYTES=1,000" in info.value.message
    assert not (tmp_path / "in").exists()


# ------------------------------------------------------------------------------------------ download


def _download_error(url, tmp_path, max_bytes=10_000, timeout=10, allow_private=True) -> WorkerError:
    with pytest.raises(WorkerError) as info:
        download(url, tmp_path / "in", max_bytes, timeout, allow_private)
    return info.value


def test_download_streams_file_up_to_the_limit_inclusive(tmp_path, monkeypatch):
    """Exactly MAX_INPUT_BYTES is accepted, declared or streamed."""
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    body = b"\x00\x01video" * 500
    with file_server({"/clip.mp4": (body, {}), "/chunked": (body, {"no_length": True})}) as base:
        assert download(base + "/clip.mp4", tmp_path / "a", len(body), 10, True).read_bytes() == body
        assert download(base + "/chunked", tmp_path / "b", len(body), 10, True).read_bytes() == body


def test_download_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    big = b"x" * 20_000
    routes = {
        "/big": (big, {}),
        "/big-chunked": (big, {"no_length": True}),
        "/slow": (b"y" * 40_000, {"delay": 0.3}),
        "/empty": (b"", {}),
        "/bad-request": (b"no", {"status": 400}),
        "/claims-a-gigabyte": (b"z" * 100, {"length": 10**9}),  # refused on the header, before any read
        "/dies-midway": (b"z" * 1000, {"length": 5000}),
    }
    with file_server(routes) as base:
        error = _download_error(base + "/big", tmp_path)
        assert error.code is ErrorCode.TOO_LARGE
        assert error.message == "media_url's file is 20,000 bytes, over the input limit MAX_INPUT_BYTES=10,000"
        error = _download_error(base + "/big-chunked", tmp_path)
        assert error.code is ErrorCode.TOO_LARGE and error.message.startswith("media_url's file is ")
        error = _download_error(base + "/claims-a-gigabyte", tmp_path, timeout=5)
        assert error.code is ErrorCode.TOO_LARGE and "1,000,000,000 bytes" in error.message
        error = _download_error(base + "/dies-midway", tmp_path)
        assert error.code is ErrorCode.DOWNLOAD_FAILED
        assert error.message.startswith("media_url download failed: ") and "broke off" in error.message
        error = _download_error(base + "/missing", tmp_path)
        assert error.code is ErrorCode.DOWNLOAD_FAILED and "HTTP 404" in error.message
        error = _download_error(base + "/bad-request", tmp_path)
        assert error.code is ErrorCode.DOWNLOAD_FAILED and "HTTP 400" in error.message
        error = _download_error(base + "/slow", tmp_path, max_bytes=100_000, timeout=1)
        assert error.code is ErrorCode.DOWNLOAD_FAILED and "DOWNLOAD_TIMEOUT=1 s" in error.message
        error = _download_error(base + "/empty", tmp_path)
        assert error.code is ErrorCode.DOWNLOAD_FAILED and "empty body" in error.message
    port = base.rsplit(":", 1)[1]  # the server is gone: nothing listens there any more
    error = _download_error(f"http://127.0.0.1:{port}/clip.mp4", tmp_path)
    assert error.code is ErrorCode.DOWNLOAD_FAILED and f"could not connect to http://127.0.0.1:{port}" in error.message


def test_base64_limit_is_inclusive(tmp_path):
    body = b"\x07" * 3000
    text = base64.b64encode(body).decode()
    assert write_base64(text, "media", tmp_path / "c", 3000).read_bytes() == body
    with pytest.raises(WorkerError) as info:
        write_base64(text, "media", tmp_path / "d", 2999)
    assert info.value.message == "media (decoded) is 3,000 bytes, over the input limit MAX_INPUT_BYTES=2,999"


def test_private_addresses_are_refused_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", raising=False)
    for url in ("http://127.0.0.1:9/x.mp4", "http://10.1.2.3/x.mp4", "http://169.254.169.254/latest", "http://[::1]/x"):
        error = _download_error(url, tmp_path, allow_private=False)
        assert error.code is ErrorCode.INVALID_INPUT, url
        assert "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true" in error.message


PUBLIC_IP = "93.184.216.34"  # a globally routable address; no packet is ever sent to it


@contextlib.contextmanager
def public_looking_host(monkeypatch, base: str, later: str | None = None) -> Iterator[str]:
    """Yields `base` (a loopback server's URL) renamed to host cdn.example, which the worker's DNS sees
    as PUBLIC_IP; the first lookup of cdn.example answers PUBLIC_IP and later ones `later` (a DNS
    rebinding) when given. A connection to PUBLIC_IP is dialled to loopback, so the SDK's pinned fetch
    reaches the test server; every other name resolves only if it is a loopback address."""
    real = socket.getaddrinfo
    lookups = []

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host == "cdn.example":
            lookups.append(host)
            host = PUBLIC_IP if later is None or len(lookups) == 1 else later
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))]
        if host == PUBLIC_IP:
            host = "127.0.0.1"
        infos = real(host, port, *args, **kwargs)
        assert all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos), host
        return infos

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    yield base.replace("127.0.0.1", "cdn.example")


def test_public_host_downloads_through_the_pinned_fetch(tmp_path, monkeypatch):
    """The control for the two tests below: the simulated public host serves its file."""
    with file_server({"/clip.mp4": (b"video", {})}) as base, public_looking_host(monkeypatch, base) as url:
        assert download(url + "/clip.mp4", tmp_path / "in", 10_000, 10, False).read_bytes() == b"video"


def test_redirect_to_a_private_address_is_refused_after_the_pre_check(tmp_path, monkeypatch):
    """cdn.example passes the worker's own check (it resolves to a public address), then answers with a
    redirect to loopback: only re-validating every hop (the SDK's safe_get) stops the second request."""
    with file_server({"/secret": (b"metadata credentials", {})}) as base:
        routes = {"/clip.mp4": (b"", {"status": 302, "headers": {"Location": base + "/secret"}})}
        with file_server(routes) as public, public_looking_host(monkeypatch, public) as url:
            error = _download_error(url + "/clip.mp4", tmp_path, allow_private=False)
    assert error.code in (ErrorCode.DOWNLOAD_FAILED, ErrorCode.INVALID_INPUT)
    assert "127.0.0.1" in error.message and not (tmp_path / "in").exists()


def test_dns_rebinding_after_the_pre_check_is_refused(tmp_path, monkeypatch):
    """cdn.example answers a public address to the worker's check, then 127.0.0.1: the fetch must use the
    address it validates itself (IP pinning), not a fresh lookup by the HTTP client."""
    with file_server({"/clip.mp4": (b"internal", {})}) as base:
        with public_looking_host(monkeypatch, base, later="127.0.0.1") as url:
            error = _download_error(url + "/clip.mp4", tmp_path, allow_private=False)
    assert error.code in (ErrorCode.DOWNLOAD_FAILED, ErrorCode.INVALID_INPUT)
    assert "127.0.0.1" in error.message and not (tmp_path / "in").exists()


def test_unresolvable_host(tmp_path):
    error = _download_error("http://no-such-host.invalid/x.mp4", tmp_path, allow_private=False)
    assert error.code is ErrorCode.DOWNLOAD_FAILED and "cannot resolve host" in error.message


# ------------------------------------------------------------------------------------------ delivery


def _output(tmp_path, size: int, name: str = "restored.mp4") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(i % 251 for i in range(size)))
    return path


def test_inline_answer_stays_under_the_limit(tmp_path):
    path = _output(tmp_path, 3000)
    answer = deliver({"success": True}, path, "auto", 10_000, None, "job/restored.mp4", 60)
    assert base64.b64decode(answer["media"][0]) == path.read_bytes()
    assert answer["videos"] == answer["media"] and "media_urls" not in answer
    assert len(json.dumps(answer)) <= 10_000
    # 3000 bytes -> 4000 base64 characters, counted once (the `videos` copy is not): over a 4000-byte limit.
    assert "media" in deliver({"success": True}, path, "inline", 4100, None, "k", 60)
    with pytest.raises(WorkerError) as info:
        deliver({"success": True}, path, "inline", 4000, None, "k", 60)
    assert info.value.code is ErrorCode.TOO_LARGE and "INLINE_MAX_BYTES=4,000" in info.value.message


def test_too_large_without_bucket_says_so(tmp_path):
    path = _output(tmp_path, 3000)
    with pytest.raises(WorkerError) as info:
        deliver({"success": True}, path, "auto", 1000, None, "k", 60)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "no bucket is configured" in info.value.message and "BUCKET_ENDPOINT_URL" in info.value.message


def test_bucket_problem_lists_what_is_missing():
    assert "no bucket" in bucket_problem(None)
    partial = BucketConfig("http://127.0.0.1:1", "key", "", None)
    assert bucket_problem(partial) == (
        "the bucket configuration lacks: secret access key, bucket name (BUCKET_NAME or s3Config.bucketName)"
    )
    assert (
        bucket_problem(
            BucketConfig.from_job({"endpointUrl": "u", "accessId": "a", "accessSecret": "s", "bucketName": "b"})
        )
        is None
    )


def test_upload_to_real_s3_server(tmp_path):
    with s3_server("outputs") as env:
        bucket = BucketConfig(
            env["BUCKET_ENDPOINT_URL"], env["BUCKET_ACCESS_KEY_ID"], env["BUCKET_SECRET_ACCESS_KEY"], "outputs"
        )
        video = _output(tmp_path, 5000, "restored.mp4")
        answer = deliver({"success": True}, video, "auto", 1000, bucket, "job-1/restored.mp4", 600)
        assert "media" not in answer and len(answer["media_urls"]) == 1
        assert "X-Amz-Signature" in answer["media_urls"][0]
        body, content_type = fetch(answer["media_urls"][0])
        assert body == video.read_bytes() and content_type == "video/mp4"
        image = _output(tmp_path, 100, "restored.jpg")
        answer = deliver({"success": True}, image, "upload", 10**9, bucket, "job-2/restored.jpg", 600)
        assert fetch(answer["media_urls"][0]) == (image.read_bytes(), "image/jpeg")
        missing = BucketConfig(bucket.endpoint_url, "k", "s", "no-such-bucket")
        with pytest.raises(WorkerError) as info:
            deliver({"success": True}, image, "upload", 10**9, missing, "k", 600)
        assert info.value.code is ErrorCode.UPLOAD_FAILED and "no-such-bucket" in info.value.message


# ------------------------------------------------------------------------------------------ progress


class _Progress:
    def __init__(self, done: int, total: int = 100):
        self.stage, self.window, self.windows, self.frames_done, self.frames_total = "dit", 1, 4, done, total


def test_percent_moves_through_the_stages_of_a_single_window():
    """A one-window clip writes its frames only at the end: the stages carry the percentage meanwhile."""
    job = _Progress(0, total=9)
    job.window, job.windows = 1, 1
    percents = []
    for stage in ("encode", "dit", "vae_decode", "write"):
        job.stage = stage
        percents.append(ProgressReporter.describe(job, elapsed=10.0)["percent"])
    assert percents == [0.0, 24.0, 39.0, 100.0]
    job.stage, job.window, job.windows = "dit", 2, 4  # second of four windows, nothing written yet
    update = ProgressReporter.describe(job, elapsed=10.0)
    assert update["percent"] == 31.0 and update["eta_seconds"] == round(10.0 * 0.69 / 0.31, 1)


def test_progress_is_throttled_and_stops_at_close():
    now = [0.0]
    sent: list[dict] = []
    reporter = ProgressReporter({"id": "j"}, lambda job, update: sent.append(update), 3.0, clock=lambda: now[0])
    for t, done in [(0.0, 0), (1.0, 10), (2.9, 20), (3.1, 25), (5.0, 30), (6.2, 50)]:
        now[0] = t
        reporter(_Progress(done))
    assert [u["frames_done"] for u in sent] == [0, 25, 50]
    assert sent[2]["percent"] == 50.0 and sent[2]["eta_seconds"] == 6.2
    assert sent[0]["eta_seconds"] is None and sent[0]["stage"] == "dit" and sent[0]["windows"] == 4
    reporter.close()
    now[0] = 100.0
    reporter(_Progress(90))
    assert len(sent) == 3


# ------------------------------------------------------------------------------------------ errors


def test_error_response_shape():
    assert error_response(WorkerError(ErrorCode.TOO_LARGE, "big")) == {"error": "big", "error_code": "TOO_LARGE"}
    answer = error_response(WorkerError(ErrorCode.GPU_OOM, "oom", refresh_worker=True))
    assert answer["refresh_worker"] is True


def test_failures_are_classified():
    import torch

    oom = classify_failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "j1")
    assert oom.code is ErrorCode.GPU_OOM and oom.refresh_worker
    assert oom.message.startswith("Processing failed: CUDA out of memory (try a smaller res_h/res_w")
    assert "sp_size" not in oom.message  # each rank holds a whole temporal window: more ranks do not cure it
    cuda = classify_failure(RuntimeError("CUDA error: an illegal memory access was encountered\nmore"), "j2")
    assert cuda.code is ErrorCode.INTERNAL and cuda.refresh_worker and "\n" not in cuda.message
    other = classify_failure(ValueError("bad thing"), "j3")
    assert other.code is ErrorCode.INTERNAL and not other.refresh_worker
    assert other.message == "Processing failed: bad thing (job j3)"


# ------------------------------------------------------------------------------------------ settings


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("MAX_FRAMES", "12")
    monkeypatch.setenv("INLINE_MAX_BYTES", "1000")
    monkeypatch.setenv("PROGRESS_INTERVAL", "0.5")
    settings = WorkerSettings.from_env()
    assert settings.limits.max_frames == 12 and settings.limits.inline_max_bytes == 1000
    assert settings.limits.max_input_bytes == Limits().max_input_bytes == 200 * 1024 * 1024
    assert settings.progress_interval == 0.5
    monkeypatch.setenv("MAX_FRAMES", "many")
    with pytest.raises(ValueError, match="MAX_FRAMES must be a positive whole number"):
        Limits.from_env()
