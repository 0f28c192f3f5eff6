"""`python -m seedvr.web --local | --url URL | --endpoint ID [--host H] [--port P] [--token-file F]`: serve the page.

Beyond loopback the page spends the operator's GPU for whoever reaches it, so there it needs an access token
(SEEDVR_WEB_TOKEN or --token-file) and refuses to start without one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from .app import MIN_TOKEN_LENGTH, WebSettings, create_app
from .jobs import Backend, InProcessBackend, local_server, runpod_endpoint

log = logging.getLogger("seedvr.web")

DEFAULT_JOB_TIMEOUT = 3600.0  # how long a blocking /status of the local server may take
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the access token (default: SEEDVR_WEB_TOKEN); required when --host is not loopback",
    )
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


def access_token(args: argparse.Namespace, env_token: str | None) -> str | None:
    """The token from --token-file or SEEDVR_WEB_TOKEN; a ValueError says why the server must not start."""
    token = args.token_file.read_text().strip() if args.token_file else env_token
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the access token must have at least {MIN_TOKEN_LENGTH} characters")
    if token is None and args.host not in LOOPBACK:
        raise ValueError(
            f"--host {args.host} serves the page beyond this machine, where anyone could spend the worker: set an "
            "access token in SEEDVR_WEB_TOKEN or --token-file FILE (e.g. python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(24))'), or listen on 127.0.0.1"
        )
    return token


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        token = access_token(args, os.environ.get("SEEDVR_WEB_TOKEN", "").strip() or None)  # before any work
        backend, mode = build_backend(args)
        settings = dataclasses.replace(WebSettings.from_env(backend), access_token=token)
    except (ValueError, OSError) as err:
        sys.exit(f"error: {err}")

    import uvicorn

    app = create_app(backend, settings, mode)
    log.info("jobs go to %s", backend.label)
    host = f"[{args.host}]" if ":" in args.host else args.host
    login = "?token=<the access token> (once; the browser keeps it)" if settings.access_token else ""
    print(f"SeedVR2 web page: http://{host}:{args.port}/{login}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
