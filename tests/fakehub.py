"""A local stand-in for the Hugging Face hub's file endpoints, as huggingface_hub 1.33 calls them.

What the real hub does for a large (LFS/xet) file, and what this server reproduces:

* `HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}` answers `302` with `Location` pointing at
  a CDN host, and carries the file's metadata itself: `X-Repo-Commit`, `ETag` (of the pointer),
  `X-Linked-Etag` (the sha256 of the content) and `X-Linked-Size`. huggingface_hub does not follow a
  redirect to another host, so the CDN is served under `localhost` while the hub is `127.0.0.1`.
* Unknown repositories and files answer `404` with `X-Error-Code: RepoNotFound` / `EntryNotFound`.
* `GET {cdn}/blobs/{sha256}` serves the bytes, honouring `Range: bytes=a-` / `bytes=a-b` with `206`
  and `Content-Range`, and `416` past the end.

Test knobs: `advertise_size` makes the metadata lie about a file's size; `stall_after` makes the CDN
send that many bytes and then hang (a client killed meanwhile leaves a partial file). Every request
is recorded (method, path, Range header) so that tests can check what the client asked for.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
BLOB = re.compile(r"^/blobs/(?P<sha>[0-9a-f]{64})$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    """repos: repo_id -> {filename: content}. Start with `with FakeHub(repos) as hub: hub.endpoint`."""

    repos: dict[str, dict[str, bytes]]
    advertise_size: dict[str, int] = field(default_factory=dict)  # filename -> announced size
    stall_after: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before hanging
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._blobs = {
            hashlib.sha256(data).hexdigest(): (name, data)
            for files in self.repos.values()
            for name, data in files.items()
        }
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def ranges(self, filename: str) -> list[str | None]:
        """The Range headers of the GETs that fetched `filename`'s content, in order."""
        sha = next(s for s, (name, _) in self._blobs.items() if name == filename)
        return [r.range for r in self.requests if r.method == "GET" and r.path == f"/blobs/{sha}"]

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()  # let stalled responses end so their threads finish
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hub.requests.append(Request(self.command, self.path, self.headers.get("Range")))
            if m := RESOLVE.match(self.path):
                self._resolve(m["repo"], m["filename"])
            elif m := BLOB.match(self.path):
                self._blob(m["sha"], body)
            else:
                self._empty(404, {"X-Error-Code": "RepoNotFound"})

        def _empty(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _resolve(self, repo_id: str, filename: str) -> None:
            if repo_id not in hub.repos:
                return self._empty(404, {"X-Error-Code": "RepoNotFound"})
            commit = {"X-Repo-Commit": hub.commit(repo_id)}
            data = hub.repos[repo_id].get(filename)
            if data is None:
                return self._empty(404, {**commit, "X-Error-Code": "EntryNotFound"})
            sha = hashlib.sha256(data).hexdigest()
            size = hub.advertise_size.get(filename, len(data))
            self._empty(
                302,
                {
                    **commit,
                    "ETag": f'"{hashlib.sha1(sha.encode()).hexdigest()}"',
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(size),
                    "Location": f"{hub.cdn}/blobs/{sha}",
                },
            )

        def _blob(self, sha: str, body: bool) -> None:
            if sha not in hub._blobs:
                return self._empty(404, {})
            name, data = hub._blobs[sha]
            start, end, status = 0, len(data) - 1, 200
            if (header := self.headers.get("Range")) and (m := RANGE.match(header)):
                start, status = int(m[1]), 206
                end = min(int(m[2]), end) if m[2] else end
                if start >= len(data):
                    return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if body:
                self._send(data[start : end + 1], hub.stall_after.get(name))

        def _send(self, chunk: bytes, stall_after: int | None) -> None:
            if stall_after is None:
                self.wfile.write(chunk)
                return
            self.wfile.write(chunk[:stall_after])
            self.wfile.flush()
            hub._release.wait()  # hang until the hub stops; the client is killed meanwhile
            self.close_connection = True

    return Handler
