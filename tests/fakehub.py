"""A tiny imitation of the Hugging Face Hub (and of a plain file mirror) on 127.0.0.1, for tests.

Serves, for every ``repo_id`` registered in :attr:`FakeHub.files`:

* ``HEAD``/``GET /<org>/<repo>/resolve/<rev>/<path>`` with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag`` (the SHA-256 for LFS files, as the Hub does) and ``X-Linked-Size`` (what
  huggingface_hub 2.x reads), ``Range: bytes=N-`` support (206), ``X-Error-Code`` 404s for missing
  files (``EntryNotFound``) and revisions (``RevisionNotFound``);
* ``GET /api/models/<org>/<repo>`` with the commit ``sha``, and ``/api/models/<org>/<repo>/tree/<rev>``
  listing every file (what ``snapshot_download`` reads);
* ``HEAD``/``GET /mirror/<name>`` for plain files (the landmark weights' mirror), with Range support.

Failure modes: :attr:`FakeHub.wrong_sha` advertises a different SHA-256 than the content has;
:attr:`FakeHub.cut_first` sends only part of the body on the first full GET of a path and closes the
connection (the client sees a short read and must resume with a Range request).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


def file_sha256(data: bytes | Path) -> str:
    """SHA-256 hex digest of bytes or of a file's content."""
    digest = hashlib.sha256()
    if isinstance(data, bytes):
        digest.update(data)
    else:
        with open(data, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class FakeHub:
    """State of the fake server; tests mutate the fields between requests."""

    files: dict[str, dict[str, bytes | Path]] = field(default_factory=dict)  # repo_id -> path -> content
    mirror: dict[str, bytes | Path] = field(default_factory=dict)  # name -> content for /mirror/<name>
    commit: str = COMMIT
    revisions: tuple[str, ...] = ("main", COMMIT)
    wrong_sha: set[str] = field(default_factory=set)  # paths whose advertised SHA-256 is wrong
    cut_first: set[str] = field(default_factory=set)  # paths whose first full GET is cut short
    cut_fraction: float = 0.5
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    authorizations: list[str | None] = field(default_factory=list)  # Authorization header per request
    url: str = ""
    _sha_cache: dict[int, str] = field(default_factory=dict)

    def sha(self, content: bytes | Path) -> str:
        key = id(content)
        if key not in self._sha_cache:
            self._sha_cache[key] = file_sha256(content)
        return self._sha_cache[key]

    def ranges(self, suffix: str) -> list[str | None]:
        """The Range headers of the GET requests whose path ends with ``suffix``."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(suffix)]


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")


def _size(content: bytes | Path) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send_error(self, status: int, code: str | None = None) -> None:
            body = json.dumps({"error": code or "error"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self, key: str, content: bytes | Path, *, hub_headers: bool) -> None:
            size = _size(content)
            sha = hub.sha(content)
            if key in hub.wrong_sha:
                sha = hashlib.sha256(sha.encode()).hexdigest()
            start = 0
            range_header = self.headers.get("Range")
            if range_header and self.command == "GET":
                match = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
                if match:
                    start = int(match.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
            length = size - start
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if hub_headers:
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            send = length
            if key in hub.cut_first and not start:
                hub.cut_first.discard(key)
                send = int(length * hub.cut_fraction)
            self._write_body(content, start, send)
            if send < length:
                self.wfile.flush()
                self.close_connection = True
                self.connection.close()

        def _write_body(self, content: bytes | Path, start: int, count: int) -> None:
            if isinstance(content, bytes):
                self.wfile.write(content[start : start + count])
                return
            with open(content, "rb") as f:
                f.seek(start)
                while count > 0:
                    block = f.read(min(CHUNK, count))
                    if not block:
                        break
                    self.wfile.write(block)
                    count -= len(block)

        def _send_json(self, data: object) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            path = self.path.split("?", 1)[0]
            hub.requests.append((self.command, path, self.headers.get("Range")))
            hub.authorizations.append(self.headers.get("Authorization"))
            if path.startswith("/mirror/"):
                name = path[len("/mirror/") :]
                if name not in hub.mirror:
                    return self._send_error(404)
                return self._serve(path, hub.mirror[name], hub_headers=False)
            if match := _TREE.match(path):
                if match["repo"] not in hub.files:
                    return self._send_error(404, "RepoNotFound")
                return self._send_json(
                    [
                        {"type": "file", "path": name, "size": _size(content), "oid": hub.sha(content)}
                        for name, content in sorted(hub.files[match["repo"]].items())
                    ]
                )
            if match := _API.match(path):
                if match["repo"] not in hub.files:
                    return self._send_error(404, "RepoNotFound")
                return self._send_json({"id": match["repo"], "sha": hub.commit})
            if match := _RESOLVE.match(path):
                repo, rev, file = match["repo"], match["rev"], match["path"]
                if repo not in hub.files:
                    return self._send_error(404, "RepoNotFound")
                if rev not in hub.revisions:
                    return self._send_error(404, "RevisionNotFound")
                if file not in hub.files[repo]:
                    return self._send_error(404, "EntryNotFound")
                return self._serve(file, hub.files[repo][file], hub_headers=True)
            return self._send_error(404)

        do_GET = _handle
        do_HEAD = _handle

    return Handler


class FakeHubServer:
    """Runs a :class:`FakeHub` on ``127.0.0.1`` (port 0) in a thread; use as a context manager."""

    def __init__(self, hub: FakeHub | None = None) -> None:
        self.hub = hub or FakeHub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.hub))
        self.server.daemon_threads = True
        host, port = self.server.server_address[:2]
        self.hub.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
