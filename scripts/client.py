#!/usr/bin/env python3
"""Restore a file or a URL with the SeedVR2 worker: submit with /run, poll /status, save the result.

    # a RunPod endpoint (RUNPOD_API_KEY in the environment)
    python scripts/client.py input.mp4 -o restored.mp4 --endpoint abc123xyz --res-h 1280 --res-w 720
    # the local server started by scripts/serve_local.sh (or python handler.py --rp_serve_api)
    python scripts/client.py https://example.com/clip.mp4 --url http://127.0.0.1:8000 --scale 2
    python scripts/client.py --action health --url http://127.0.0.1:8000

A local file travels as base64 inside the request (RunPod accepts at most 10 MB per /run request, about
7.5 MB of file); for bigger inputs pass an http(s) URL, which the worker downloads itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

RUNPOD_API = os.environ.get("RUNPOD_ENDPOINT_BASE_URL", "https://api.runpod.ai/v2")
RUNPOD_MAX_REQUEST_BYTES = 10 * 1024 * 1024
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


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
            sys.exit(f"error: HTTP {response.status_code} from {response.url}: {response.text[:500]}")
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
    args = parser.parse_args(argv)
    if args.action == "restore" and not args.source:
        parser.error("restore needs a source file or URL")
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


def wait(transport: Transport, job_id: str, timeout: float, poll: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    try:
        while True:
            status = transport.status(job_id)
            state = status.get("status")
            if state in FINAL:
                if last:
                    print(file=sys.stderr)
                return status
            line = progress_line(status.get("output")) or str(state)
            if line != last:
                print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)
                last = line
            if time.monotonic() > deadline:
                outcome = transport.cancel(job_id)
                sys.exit(f"\nerror: job {job_id} not finished after {timeout:.0f} s; {outcome}")
            time.sleep(poll)
    except KeyboardInterrupt:
        sys.exit(f"\njob {job_id}: {transport.cancel(job_id)}")


def default_output(source: str, output: dict[str, Any]) -> Path:
    name = Path(source.split("?", 1)[0].rstrip("/")).stem or "restored"
    ext = "mp4" if output.get("media_type") == "video" else "png"
    return Path(f"{name}_restored.{ext}")


def save(output: dict[str, Any], target: Path) -> None:
    if output.get("media"):
        target.write_bytes(base64.b64decode(output["media"][0]))
    else:
        with requests.get(output["media_urls"][0], stream=True, timeout=600) as response:
            response.raise_for_status()
            with target.open("wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
    print(f"saved {target} ({output.get('resolution')}, {output.get('media_type')})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.endpoint:
        api_key = os.environ.get("RUNPOD_API_KEY")
        if not api_key:
            sys.exit("error: set RUNPOD_API_KEY to call a RunPod endpoint")
        transport = Transport(f"{RUNPOD_API}/{args.endpoint}", api_key, local=False)
    else:
        transport = Transport(args.url, None, local=True)
    body: dict[str, Any] = {"input": build_input(args)}
    if args.endpoint:
        body["policy"] = {"executionTimeout": int(args.timeout * 1000)}
    job_id = transport.submit(body)
    print(f"job {job_id} submitted", file=sys.stderr)
    status = wait(transport, job_id, args.timeout, args.poll)
    output = status.get("output") if isinstance(status.get("output"), dict) else {}
    if status.get("status") != "COMPLETED":
        code = output.get("error_code") or status.get("status")
        print(f"error [{code}]: {status.get('error') or 'no message'}", file=sys.stderr)
        return 1
    if args.action != "restore":
        print(json.dumps(output, indent=2))
        return 0
    if not output.get("media") and not output.get("media_urls"):
        print(
            "error: the job completed without output (an answer over RunPod's size limit is dropped)", file=sys.stderr
        )
        return 1
    summary = {k: v for k, v in output.items() if k not in ("media", "videos")}
    print(json.dumps(summary, indent=2))
    save(output, args.output or default_output(args.source, output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
