"""Getting the job's input file onto local disk: inline base64 or a size- and time-capped download.

Both paths enforce MAX_INPUT_BYTES before holding the bytes: base64 by its length (before decoding), a download
by its Content-Length and again while streaming (a server may lie or send none).
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import requests
from runpod.serverless.utils.rp_ssrf import SSRFError, is_safe_address, safe_get

from .errors import ErrorCode, WorkerError

CHUNK_BYTES = 1024 * 1024
READ_TIMEOUT = 30.0
_WHITESPACE = re.compile(r"\s+")


def _too_large(what: str, size: int, limit: int) -> WorkerError:
    return WorkerError(
        ErrorCode.TOO_LARGE,
        f"{what} is {size:,} bytes, over the input limit MAX_INPUT_BYTES={limit:,}",
    )


def strip_data_uri(data: str, field: str) -> str:
    """Accept `data:video/mp4;base64,...` as browsers produce it; only base64 data URIs carry binary safely."""
    if not data.startswith("data:"):
        return data
    header, sep, payload = data.partition(",")
    if not sep or not header.endswith(";base64"):
        raise WorkerError(
            ErrorCode.INVALID_INPUT, f"Invalid base64 {field} data: a data: URI must end its header with ;base64,"
        )
    return payload


def write_base64(data: str, field: str, dest: Path, max_bytes: int) -> Path:
    """Decode the client's base64 into `dest`; the limit is checked on the text, so nothing big is decoded."""
    payload = strip_data_uri(data.strip(), field)
    if _WHITESPACE.search(payload):
        payload = _WHITESPACE.sub("", payload)  # line-wrapped base64 (e.g. from `base64` without -w0)
    if not payload:
        raise WorkerError(
            ErrorCode.INVALID_INPUT, f"{field} is empty: it must hold the base64 bytes of a video or image"
        )
    estimated = len(payload) * 3 // 4
    if estimated > max_bytes:
        raise _too_large(f"{field} (decoded)", estimated, max_bytes)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise WorkerError(ErrorCode.INVALID_INPUT, f"Invalid base64 {field} data: {err}") from None
    dest.write_bytes(raw)
    return dest


def _refuse_private_host(url: str) -> None:
    """Name the rule in the message; the SDK's pinned fetch below repeats this check against DNS rebinding."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as err:
        raise WorkerError(
            ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: cannot resolve host {host!r} ({err})"
        ) from None
    blocked = sorted(ip for ip in addresses if not is_safe_address(ip))
    if blocked:
        raise WorkerError(
            ErrorCode.INVALID_INPUT,
            f"media_url must point to a public address: {host} resolves to {blocked[0]} "
            "(private and loopback addresses are refused unless RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true)",
        )


def download(url: str, dest: Path, max_bytes: int, timeout: float, allow_private: bool) -> Path:
    """Stream `url` into `dest` within `max_bytes` and `timeout` seconds overall."""
    if not allow_private:
        _refuse_private_host(url)
    deadline = time.monotonic() + timeout
    try:
        response = safe_get(url, stream=True, timeout=min(READ_TIMEOUT, timeout))
    except SSRFError as err:
        raise WorkerError(ErrorCode.DOWNLOAD_FAILED, f"media_url refused: {err}") from None
    except requests.RequestException as err:
        raise WorkerError(
            ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: {type(err).__name__}: {err}"
        ) from None
    with response:
        if response.status_code >= 400:
            raise WorkerError(
                ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: HTTP {response.status_code} from {url}"
            )
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _too_large("media_url's file", int(declared), max_bytes)
        _stream_to_file(response, dest, max_bytes, deadline, timeout)
    if dest.stat().st_size == 0:
        raise WorkerError(ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: {url} returned an empty body")
    return dest


def _stream_to_file(response: requests.Response, dest: Path, max_bytes: int, deadline: float, timeout: float) -> None:
    written = 0
    try:
        with dest.open("wb") as out:
            for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise _too_large("media_url's file", written, max_bytes)
                if time.monotonic() > deadline:
                    raise WorkerError(
                        ErrorCode.DOWNLOAD_FAILED,
                        f"media_url download failed: not finished within DOWNLOAD_TIMEOUT={timeout:g} s",
                    )
                out.write(chunk)
    except requests.RequestException as err:
        raise WorkerError(
            ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: {type(err).__name__}: {err}"
        ) from None
