#!/usr/bin/env python3
"""Restore a file or a URL with the SeedVR2 worker: submit with /run, poll /status, save the result.

    # a RunPod endpoint (RUNPOD_API_KEY in the environment)
    python scripts/client.py input.mp4 -o restored.mp4 --endpoint abc123xyz --res-h 1280 --res-w 720
    # the local server started by scripts/serve_local.sh (or python handler.py --rp_serve_api)
    python scripts/client.py https://example.com/clip.mp4 --url http://127.0.0.1:8000 --scale 2
    python scripts/client.py --action health --url http://127.0.0.1:8000
    # a long video over several workers: the plan, window ranges as parallel jobs, one stitched file
    python scripts/client.py long.mp4 -o restored.mp4 --endpoint abc123xyz --workers 8 --resume parts/

A local file travels as base64 inside the request (RunPod accepts at most 10 MB per /run request, about
7.5 MB of file); for bigger inputs pass an http(s) URL, which the worker downloads itself.

With --workers N the client asks for the video's window plan, restores ranges of windows as N (or
--parts) jobs at once, retries a failed part up to --retries times, crossfades the parts with the
pipeline's own code (seedvr.pipeline.parts.stitch) and encodes once with the input's audio: the same
frames as one job would give. This mode needs the project's Python packages (torch, av).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import requests

RUNPOD_API = os.environ.get("RUNPOD_ENDPOINT_BASE_URL", "https://api.runpod.ai/v2")
RUNPOD_MAX_REQUEST_BYTES = 10 * 1024 * 1024
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
ROOT = Path(__file__).resolve().parents[1]


class JobError(Exception):
    """A call or a job that failed; the message is for the user, `code` the worker's error_code if any."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f" [{self.code}]: {self.args[0]}" if self.code else f": {self.args[0]}"


class Stopped(JobError):
    """The fan-out was interrupted: a part stops polling, cancels its job and is not retried."""


class Transport:
    """RunPod's queue API. The SDK's local server differs: /status is a POST, and it runs the job."""

    def __init__(self, base: str, api_key: str | None, local: bool):
        self.base = base.rstrip("/")
        self.local = local
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def submit(self, body: dict[str, Any]) -> str:
        reply = self._check(self.session.post(f"{self.base}/run", json=body, timeout=120))
        return reply["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        if self.local:  # the local server executes the stored job during this call
            return self._check(self.session.post(f"{self.base}/status/{job_id}", timeout=None))
        return self._check(self.session.get(f"{self.base}/status/{job_id}", timeout=60))

    def cancel(self, job_id: str) -> str:
        """Ask RunPod to stop the job; the SDK's local server has no /cancel, so say what happens there."""
        if self.local:
            return "not cancelled: the local server has no /cancel, the job runs to its end (stop the server to stop it)"
        self.session.post(f"{self.base}/cancel/{job_id}", timeout=30)
        return "cancelled"

    @staticmethod
    def _check(response: requests.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise JobError(f"HTTP {response.status_code} from {response.url}: {response.text[:500]}")
        return response.json()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="input video/image file, or an http(s) URL")
    parser.add_argument("-o", "--output", type=Path, help="where to save the result (default: <input>_restored.<ext>)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="RunPod endpoint id (API key from RUNPOD_API_KEY)")
    where.add_argument("--url", help="base URL of a local worker server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--action", choices=("restore", "health", "initialize"), default="restore", help="what to ask (default: restore)"
    )
    # Options left out are left to the worker, whose defaults are named here (docs/API.md).
    parser.add_argument(
        "--res-h", type=int, help="output area with --res-w: about res_h*res_w pixels, the input's aspect ratio kept, "
        "so 1280x720 means 720p-class in landscape and portrait (default: 1280)",
    )
    parser.add_argument("--res-w", type=int, help="see --res-h: part of the area, not the output width (default: 720)")
    parser.add_argument("--scale", type=float, help="instead of --res-h/--res-w: factor over the input size, 0.25..16")
    parser.add_argument("--seed", type=int, help="same input, seed and settings give the same output (default: 666)")
    parser.add_argument(
        "--model-type", choices=("seedvr2_3b", "seedvr2_7b"), help="default: the resident model, else the endpoint's"
    )
    parser.add_argument("--model-variant", choices=("normal", "sharp"), help="sharp exists for 7B only (default: normal)")
    parser.add_argument("--sp-size", type=int, help="sequence-parallel GPUs (default: the resident model's, else 1)")
    parser.add_argument("--color-fix", choices=("wavelet", "adain", "none"), help="keep the input's colours (default: wavelet)")
    parser.add_argument(
        "--batch-frames", type=int, help="frames per temporal window, 4n+1 (default: the largest that fits memory)"
    )
    parser.add_argument(
        "--overlap-frames", type=int, help="frames blended by neighbouring windows (default: 5; at most 4 without --batch-frames)"
    )
    parser.add_argument("--fps", type=float, help="output frame rate; frames are kept, the duration changes (default: the input's)")
    parser.add_argument(
        "--no-audio", dest="keep_audio", action="store_false", default=None, help="drop the input's audio (default: kept)"
    )
    parser.add_argument(
        "--output-format",
        choices=("mp4", "webm", "mov", "png", "jpg", "webp"),
        help="default: mp4 for a video, png for an image",
    )
    parser.add_argument("--crf", type=int, help="video quality, 0 (lossless) to 51 (default: 18)")
    parser.add_argument(
        "--output-mode",
        choices=("auto", "inline", "upload"),
        help="inline base64 or a bucket upload; auto picks by size (default: auto)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds to wait for the job (RunPod: also its executionTimeout; default: 3600)",
    )
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between /status calls (default: 2)")
    parser.add_argument(
        "--no-scene-cuts", dest="scene_cuts", action="store_false", default=None,
        help="plan the video as one shot (default: windows never span a hard cut)",
    )
    fan = parser.add_argument_group("fan-out (a video over several workers)")
    fan.add_argument("--workers", type=int, help="restore window ranges as this many jobs at once")
    fan.add_argument("--parts", type=int, help="window ranges to cut the video into (default: --workers)")
    fan.add_argument("--retries", type=int, default=2, help="new attempts for a failed part (default 2)")
    fan.add_argument("--resume", type=Path, metavar="DIR", help="keep finished parts in DIR and reuse them")
    args = parser.parse_args(argv)
    if args.action == "restore" and not args.source:
        parser.error("restore needs a source file or URL")
    if args.workers is not None and (args.workers < 1 or args.action != "restore"):
        parser.error("--workers needs a restore and at least 1 worker")
    if (args.parts is not None and args.parts < 1) or args.retries < 0:
        parser.error("--parts must be >= 1 and --retries >= 0")
    return args


OPTION_FIELDS = (
    "res_h",
    "res_w",
    "scale",
    "seed",
    "model_type",
    "model_variant",
    "sp_size",
    "color_fix",
    "batch_frames",
    "overlap_frames",
    "fps",
    "keep_audio",
    "output_format",
    "crf",
    "output_mode",
    "scene_cuts",
)


def build_input(args: argparse.Namespace) -> dict[str, Any]:
    job: dict[str, Any] = {"action": args.action}
    job.update({name: getattr(args, name) for name in OPTION_FIELDS if getattr(args, name) is not None})
    if args.action != "restore":
        return {k: v for k, v in job.items() if k in ("action", "model_type", "model_variant", "sp_size")}
    if args.source.startswith(("http://", "https://")):
        job["media_url"] = args.source
    else:
        job["media"] = base64.b64encode(Path(args.source).read_bytes()).decode("ascii")
        if len(job["media"]) > RUNPOD_MAX_REQUEST_BYTES and args.endpoint:
            sys.exit("error: the file is over RunPod's 10 MB request limit as base64: put it at a URL and pass that")
    return job


def progress_line(output: Any) -> str | None:
    if not isinstance(output, dict) or "stage" not in output:
        return None
    eta = output.get("eta_seconds")
    eta_text = f", ETA {eta:.0f} s" if isinstance(eta, (int, float)) else ""
    return (
        f"{output['stage']}: window {output.get('window')}/{output.get('windows')}, "
        f"frames {output.get('frames_done')}/{output.get('frames_total')} ({output.get('percent')}%){eta_text}"
    )


def wait(transport: Transport, job_id: str, timeout: float, poll: float, on_update=None) -> dict[str, Any]:
    """Poll until the job ends; `on_update(status)` sees every status before that. Past `timeout` the job
    is cancelled and JobError raised."""
    deadline = time.monotonic() + timeout
    while True:
        status = transport.status(job_id)
        if status.get("status") in FINAL:
            return status
        if on_update is not None:
            on_update(status)
        if time.monotonic() > deadline:
            outcome = transport.cancel(job_id)
            raise JobError(f"job {job_id} not finished after {timeout:.0f} s; {outcome}")
        time.sleep(poll)


class Line:
    """One progress line on stderr, rewritten in place."""

    def __init__(self) -> None:
        self.last: str | None = None

    def show(self, text: str) -> None:
        if text != self.last:
            print(f"\r{text:<100}", end="", file=sys.stderr, flush=True)
            self.last = text

    def end(self) -> None:
        if self.last:
            print(file=sys.stderr)


def job_body(args: argparse.Namespace, job_input: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"input": job_input}
    if args.endpoint:
        body["policy"] = {"executionTimeout": int(args.timeout * 1000)}
    return body


def run_job(
    transport: Transport, args: argparse.Namespace, job_input: dict[str, Any], on_update=None
) -> dict[str, Any]:
    """Submit, wait, and return the output of a COMPLETED job; otherwise JobError with the worker's message."""
    job_id = transport.submit(job_body(args, job_input))
    try:
        status = wait(transport, job_id, args.timeout, args.poll, on_update)
    except (KeyboardInterrupt, Stopped):
        print(f"\njob {job_id}: {transport.cancel(job_id)}", file=sys.stderr)
        raise
    output = status.get("output") if isinstance(status.get("output"), dict) else {}
    if status.get("status") != "COMPLETED":
        code = output.get("error_code") or status.get("status")
        raise JobError(status.get("error") or f"job {job_id}: no message", code)
    return output


def default_output(source: str, output: dict[str, Any]) -> Path:
    name = Path(source.split("?", 1)[0].rstrip("/")).stem or "restored"
    ext = "mp4" if output.get("media_type") == "video" else "png"
    return Path(f"{name}_restored.{ext}")


def fetch_result(output: dict[str, Any], target: Path) -> None:
    """The job's file, inline or from its presigned URL, into `target` (whole or not at all)."""
    if not output.get("media") and not output.get("media_urls"):
        raise JobError("the job completed without output (an answer over RunPod's size limit is dropped)")
    tmp = target.with_name(target.name + ".tmp")
    if output.get("media"):
        tmp.write_bytes(base64.b64decode(output["media"][0]))
    else:
        with requests.get(output["media_urls"][0], stream=True, timeout=600) as response:
            response.raise_for_status()
            with tmp.open("wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
    tmp.replace(target)


# ---------------------------------------------------------------------------------------------- fan-out


def split_ranges(windows: int, parts: int) -> list[tuple[int, int]]:
    """`parts` (at most one per window) contiguous ranges of about equal numbers of windows."""
    parts = min(parts, windows)
    bounds = [round(i * windows / parts) for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


class Board:
    """The parts' progress, summed into one line: frames done over the frames of all parts."""

    def __init__(self, spans: list[list[int]], ranges: list[tuple[int, int]]):
        self.frames = {r: spans[r[1] - 1][1] - spans[r[0]][0] for r in ranges}
        self.done: dict[tuple[int, int], int] = {}
        self.finished: set[tuple[int, int]] = set()
        self.retries = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def update(self, part: tuple[int, int], status: dict[str, Any]) -> None:
        if self.stop.is_set():
            raise Stopped("interrupted")
        output = status.get("output")
        if isinstance(output, dict) and isinstance(output.get("frames_done"), int):
            with self.lock:
                self.done[part] = min(output["frames_done"], self.frames[part])

    def finish(self, part: tuple[int, int]) -> None:
        with self.lock:
            self.finished.add(part)
            self.done[part] = self.frames[part]

    def text(self) -> str:
        with self.lock:
            done, total = sum(self.done.values()), sum(self.frames.values())
            retried = f", {self.retries} retried" if self.retries else ""
            return (
                f"fan-out: {len(self.finished)}/{len(self.frames)} parts, frames {done}/{total} "
                f"({100 * done / max(total, 1):.0f}%){retried}"
            )


def restore_part(
    transport: Transport, args: argparse.Namespace, job_input: dict[str, Any], part: tuple[int, int], target: Path,
    board: Board,
) -> None:
    """One window range as a job, tried up to 1 + args.retries times; its part file lands in `target`."""
    for attempt in range(args.retries + 1):
        try:
            output = run_job(transport, args, {**job_input, "windows": list(part)}, lambda s: board.update(part, s))
            fetch_result(output, target)
            board.finish(part)
            return
        except (JobError, requests.RequestException) as exc:
            err = exc if isinstance(exc, JobError) else JobError(f"{type(exc).__name__}: {exc}")
            if isinstance(err, Stopped):
                raise
            if attempt == args.retries:
                raise JobError(f"windows {list(part)} failed {attempt + 1} times; last error{err}") from None
            with board.lock:
                board.retries += 1
            print(f"\nwindows {list(part)}: attempt {attempt + 1} failed (error{err}); retrying", file=sys.stderr)


def local_copy(source: str, folder: Path) -> Path:
    """The input on this machine (a URL is downloaded): its audio goes into the output, its hash keys --resume."""
    if not source.startswith(("http://", "https://")):
        return Path(source)
    target = folder / "input"
    fetch_result({"media_urls": [source]}, target)
    return target


def fan_out(transport: Transport, args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from seedvr import media
    from seedvr.pipeline.parts import WindowStore, file_digest, stitch

    scratch = Path(tempfile.mkdtemp(prefix="seedvr-fanout-"))
    try:
        source = local_copy(args.source, scratch)
        request = {k: v for k, v in build_input(args).items() if k not in ("action", "output_format", "crf")}
        plan = run_job(transport, args, {**request, "action": "plan"})
        if plan["media_type"] != "video":
            raise JobError("--workers restores videos; send an image as a single job")
        pinned = {k: v for k, v in request.items() if k != "fps"}  # the output's rate is the client's business
        pinned.update({k: plan[k] for k in ("batch_frames", "overlap_frames", "vae_tile")})
        spans = plan["windows"]
        ranges = split_ranges(len(spans), args.parts or args.workers)
        print(f"plan: {plan['frames']} frames in {len(spans)} windows, {len(plan['scene_cuts'])} cut(s), "
              f"{len(ranges)} parts over {args.workers} workers", file=sys.stderr)
        store = WindowStore(args.resume or scratch / "parts")
        settings = {k: v for k, v in pinned.items() if k not in ("media", "media_url")}
        store.bind({"input_sha256": file_digest(source), "request": settings, "plan": plan})
        files = {part: store.folder / f"part-{part[0]:06d}-{part[1]:06d}.npz" for part in ranges}
        board = Board(spans, ranges)
        for part in ranges:
            if files[part].exists():
                board.finish(part)
        line = Line()
        with ThreadPoolExecutor(args.workers) as pool:
            futures = [
                pool.submit(restore_part, transport, args, pinned, part, files[part], board)
                for part in ranges if part not in board.finished
            ]
            try:
                while not all(f.done() for f in futures):
                    line.show(board.text())
                    time.sleep(0.2)
            except KeyboardInterrupt:
                board.stop.set()  # each part cancels its job at its next poll
                raise
            line.show(board.text())
            line.end()
            for future in futures:
                future.result()
        target = args.output or default_output(args.source, plan)
        width, height = (int(n) for n in plan["resolution"].split("x"))
        fmt = args.output_format or "mp4"
        audio = source if plan["has_audio"] and args.keep_audio is not False else None
        crf = 18 if args.crf is None else args.crf
        rate = Fraction(plan["frame_rate"])
        writer = media.VideoWriter(target, width, height, rate, fmt=fmt, crf=crf, audio_from=audio)
        with writer:
            for chunk in stitch([files[part] for part in ranges], spans, plan["overlap_frames"]):
                writer.write(chunk)
        print(f"saved {target} ({plan['resolution']}, {plan['frames']} frames, {len(ranges)} parts)", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.endpoint:
        api_key = os.environ.get("RUNPOD_API_KEY")
        if not api_key:
            sys.exit("error: set RUNPOD_API_KEY to call a RunPod endpoint")
        transport = Transport(f"{RUNPOD_API}/{args.endpoint}", api_key, local=False)
    else:
        transport = Transport(args.url, None, local=True)
    try:
        if args.workers:
            return fan_out(transport, args)
        return single_job(transport, args)
    except JobError as err:
        print(f"\nerror{err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return 130


def single_job(transport: Transport, args: argparse.Namespace) -> int:
    line = Line()
    output = run_job(transport, args, build_input(args), lambda status: line.show(
        progress_line(status.get("output")) or str(status.get("status"))))
    line.end()
    if args.action != "restore":
        print(json.dumps(output, indent=2))
        return 0
    summary = {k: v for k, v in output.items() if k not in ("media", "videos")}
    print(json.dumps(summary, indent=2))
    target = args.output or default_output(args.source, output)
    fetch_result(output, target)
    print(f"saved {target} ({output.get('resolution')}, {output.get('media_type')})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
