"""`python -m seedvr.web --local | --url URL | --endpoint ID [--host H] [--port P]`: serve the page."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .jobs import Backend, InProcessBackend, local_server, runpod_endpoint

log = logging.getLogger("seedvr.web")

DEFAULT_JOB_TIMEOUT = 3600.0  # how long a blocking /status of the local server may take


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m seedvr.web",
        description="Serve a page that restores a video or an image through the SeedVR2 worker.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run the worker in this process (needs the model files)")
    where.add_argument("--url", help="a local RunPod server: python handler.py --rp_serve_api (e.g. http://127.0.0.1:8000)")
    where.add_argument(
        "--endpoint", help="a RunPod endpoint id (default: RUNPOD_ENDPOINT_ID); the key comes from RUNPOD_API_KEY only"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    args = parser.parse_args(argv)
    if not (args.local or args.url or args.endpoint):
        args.endpoint = os.environ.get("RUNPOD_ENDPOINT_ID")
        if not args.endpoint:
            parser.error("say where jobs go: --local, --url URL or --endpoint ID (or set RUNPOD_ENDPOINT_ID)")
    return args


def build_backend(args: argparse.Namespace) -> tuple[Backend, str]:
    """The backend and the mode name shown on the page."""
    if args.local:
        # The worker's default of one update per 3 s is meant for RunPod's API; a page on the same machine can
        # show more. An explicit PROGRESS_INTERVAL still wins.
        os.environ.setdefault("PROGRESS_INTERVAL", "1")
        return InProcessBackend(), "local"
    if args.url:
        from seedvr.worker.settings import Limits

        return local_server(args.url, Limits.from_env().max_input_bytes, DEFAULT_JOB_TIMEOUT), "server"
    return runpod_endpoint(args.endpoint, os.environ.get("RUNPOD_API_KEY", "")), "runpod"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        backend, mode = build_backend(args)
    except ValueError as err:
        sys.exit(f"error: {err}")

    import uvicorn

    from .app import WebSettings, create_app

    app = create_app(backend, WebSettings.from_env(backend), mode)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the page has no login, anyone who reaches it can use the worker", args.host)
    log.info("jobs go to %s", backend.label)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"SeedVR2 web page: http://{host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
