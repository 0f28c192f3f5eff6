"""Getting the job's input file onto local disk: inline base64 or a size- and time-capped download.

Both paths enforce MAX_INPUT_BYTES before holding the bytes: base64 by its length (before decoding), a download
by its Content-Length and again while streaming (a server may lie or send none). A download has one deadline
for the whole transfer, and its messages name the host only (URLs may carry credentials or tokens).
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import requests
from runpod.serverless.utils.rp_ssrf import SSRFError, is_safe_address, safe_get

from .errors import ErrorCode, WorkerError, redact, redact_url

CHUNK_BYTES = 1024 * 1024
READ_TIMEOUT = 30.0  # per socket operation; the whole transfer has DOWNLOAD_TIMEOUT
ABANDON_GRACE = 2.0  # seconds the job waits for a shut-down transfer thread to end
_NO_SDK_CAP = 2**62
_WHITESPACE = re.compile(r"\s+")
_NON_PUBLIC = re.compile(r"host '([^']*)' resolves to non-public address (\S+)")


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
        raise _private(host, blocked[0])


def _private(host: str, ip: str) -> WorkerError:
    """One code for a private address, given directly or reached through a redirect."""
    where = f"{host} is" if host == ip else f"{host} resolves to {ip},"
    return WorkerError(
        ErrorCode.INVALID_INPUT,
        f"media_url must point to a public address: {where} a private or loopback address "
        "(refused unless RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true)",
    )


def _refused(err: SSRFError) -> WorkerError:
    """The SDK checks every redirect hop (the first one passed `_refuse_private_host`); its refusals name
    URLs, which are redacted here."""
    text = str(err)
    if match := _NON_PUBLIC.search(text):
        return _private(match.group(1), match.group(2))
    return WorkerError(ErrorCode.DOWNLOAD_FAILED, f"media_url refused: {redact(text)}")


def _failed(err: requests.RequestException, where: str, connected: bool, socket_timeout: float) -> WorkerError:
    """A transport failure in words, without the exception's text (requests quotes the URL's path and query).
    `where` is the host asked; a redirect may have led elsewhere, which the exception's request knows."""
    if err.request is not None and err.request.url:
        where = redact_url(err.request.url)
    if isinstance(err, requests.exceptions.SSLError):
        reason = f"TLS handshake with {where} failed"
    elif isinstance(err, requests.ConnectTimeout):
        reason = f"could not connect to {where} within {socket_timeout:g} s"
    elif isinstance(err, requests.ReadTimeout) or (connected and "timed out" in str(err)):
        reason = f"{where} sent nothing for {socket_timeout:g} s"
    elif isinstance(err, requests.ConnectionError) and not connected:
        reason = f"could not connect to {where}"
    else:
        reason = f"the connection to {where} broke off before the end of the file"
    return WorkerError(ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: {reason}")


class _Transfer:
    """One download, run in its own thread so that the job can leave it at the deadline.

    A socket timeout restarts with every byte, so a server that drips or stalls is only bounded by a deadline
    on the whole transfer. At the deadline the job thread calls `abandon`: the socket is shut down (a blocked
    read returns at once) and no file is opened any more, so nothing is left in the job's folder.
    """

    def __init__(self, url: str, dest: Path, max_bytes: int, socket_timeout: float, allow_private: bool):
        self.url, self.dest, self.max_bytes = url, dest, max_bytes
        self.socket_timeout, self.allow_private = socket_timeout, allow_private
        self.where = redact_url(url)
        self.error: WorkerError | None = None
        self.written = 0
        self._lock = threading.Lock()
        self._abandoned = False
        self._response: requests.Response | None = None

    def run(self) -> None:
        try:
            self._fetch()
        except WorkerError as err:
            self.error = err
        except SSRFError as err:
            self.error = _refused(err)
        except requests.RequestException as err:
            self.error = _failed(err, self.where, self._response is not None, self.socket_timeout)
        except Exception as err:  # noqa: BLE001 - a thread's failure must reach the job, not the thread's stderr
            self.error = WorkerError(ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: {redact(str(err))}")

    def _fetch(self) -> None:
        if not self.allow_private:
            _refuse_private_host(self.url)
        # The SDK's own cap (5 GiB) would answer DOWNLOAD_FAILED; MAX_INPUT_BYTES is checked below instead.
        response = safe_get(self.url, stream=True, timeout=self.socket_timeout, max_bytes=_NO_SDK_CAP)
        with response:
            with self._lock:
                if self._abandoned:
                    return
                self._response = response
            if response.status_code >= 400:
                raise WorkerError(
                    ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: HTTP {response.status_code} from {self.where}"
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise _too_large("media_url's file", int(declared), self.max_bytes)
            with self._lock:
                if self._abandoned:
                    return
                out = self.dest.open("wb")
            with out:
                for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                    self.written += len(chunk)
                    if self.written > self.max_bytes:
                        raise _too_large("media_url's file", self.written, self.max_bytes)
                    if self._abandoned:
                        return
                    out.write(chunk)
        if self.written == 0:
            raise WorkerError(ErrorCode.DOWNLOAD_FAILED, f"media_url download failed: {self.where} returned an empty body")

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            response = self._response
        if response is not None:
            try:
                response.raw.shutdown()
            except (OSError, ValueError, RuntimeError):  # already closed or released: nothing blocks on it
                pass


def download(url: str, dest: Path, max_bytes: int, timeout: float, allow_private: bool) -> Path:
    """Stream `url` into `dest` within `max_bytes` and `timeout` seconds for the whole transfer."""
    # A socket timeout past the deadline never races it: the deadline's message is the one that holds then.
    transfer = _Transfer(url, dest, max_bytes, min(READ_TIMEOUT, timeout + ABANDON_GRACE), allow_private)
    thread = threading.Thread(target=transfer.run, name="media_url download", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        transfer.abandon()
        thread.join(ABANDON_GRACE)
        raise WorkerError(
            ErrorCode.DOWNLOAD_FAILED,
            f"media_url download failed: {transfer.where} did not deliver the file within DOWNLOAD_TIMEOUT={timeout:g} s",
        )
    if transfer.error is not None:
        raise transfer.error
    return dest
