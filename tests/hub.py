"""A read-only Hugging Face hub on the loopback interface, serving repos from a local directory.

The tests point ``HF_ENDPOINT`` at it, so that huggingface_hub's ``HfFileSystem`` (``hf://``
paths in datatrove and fsspec), ``hf_hub_download`` and ``snapshot_download`` run their real
code against it with no network. Repos are laid out as ``ROOT/{datasets,models}/<org>/<name>/...``,
the same layout as ``hf://`` paths and `mmbert-data download`'s mirror.

The endpoints served are the ones those clients call:

- ``GET /api/{datasets,models}/<repo>[/revision/<rev>]``: the repo's info and commit ``sha``;
- ``GET /api/.../<repo>/tree/<rev>[/<path>]`` (``recursive``, ``expand``): a folder's entries;
- ``POST /api/.../<repo>/paths-info/<rev>``: entries for given paths;
- ``GET``/``HEAD /[datasets/]<repo>/resolve/<rev>/<path>``: a file, whole or by ``Range`` (206).

Binary files (Parquet, compressed JSON lines, model weights) are described as the hub stores
them, in LFS: their entries carry ``lfs: {oid: <sha256>, size, pointerSize}``. ``bytes_per_second``
slows file bodies down, so that a test can stop a client in the middle of a file.

A missing repo, revision or file is a 404 carrying ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``), from which the clients raise their typed errors. The
only revision is ``main`` (or the commit ``sha``, a digest of every file's path, size and
modification time, so that a changed file is a new commit and no client cache serves it stale).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_DATE = "2026-01-01T00:00:00.000Z"
_REPO = r"(?P<kind>datasets|models)/(?P<repo>[^/]+/[^/]+)"
_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_LFS_SUFFIXES = (".parquet", ".gz", ".zst", ".zstd", ".bin", ".safetensors", ".arrow")
_CHUNK = 16 << 10


class _Missing(Exception):
    """A 404 with the hub's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _Repo:
    """One repo's directory, as the hub describes it."""

    def __init__(self, root: Path, kind: str, repo_id: str):
        self.path = root / kind / repo_id
        if not self.path.is_dir():
            raise _Missing("RepoNotFound", f"Repository {repo_id} not found")
        self.id = repo_id
        self.files = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        digest = hashlib.sha1(repo_id.encode())
        for name in self.files:
            stat = (self.path / name).stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        self.sha = digest.hexdigest()

    def check_revision(self, revision: str | None) -> None:
        if revision is not None and unquote(revision) not in ("main", self.sha):
            raise _Missing("RevisionNotFound", f"Invalid rev id: {unquote(revision)}")

    def entry(self, name: str, expand: bool) -> dict:
        path = self.path / name
        if path.is_dir():
            oid = hashlib.sha1(name.encode()).hexdigest()
            found = {"type": "directory", "path": name, "oid": oid, "size": 0}
        else:
            found = {"type": "file", "path": name, "oid": _oid(path), "size": path.stat().st_size}
            if name.endswith(_LFS_SUFFIXES):
                found["lfs"] = {"oid": _sha256(path), "size": found["size"], "pointerSize": 134}
        if expand:
            found["lastCommit"] = {"id": self.sha, "title": "sample", "date": _DATE}
        return found

    def listing(self, folder: str, recursive: bool) -> list[str]:
        base = self.path / folder if folder else self.path
        if not base.is_dir():
            raise _Missing("EntryNotFound", f"{folder} does not exist in {self.id}")
        children = base.rglob("*") if recursive else base.iterdir()
        return sorted(p.relative_to(self.path).as_posix() for p in children)


_OIDS: dict[tuple[str, int, int], str] = {}


def _oid(path: Path) -> str:
    """The git blob id of a file (sha1 of ``blob <size>\\0`` + bytes), cached by path, size and mtime."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _OIDS:
        digest = hashlib.sha1(f"blob {stat.st_size}\0".encode())
        digest.update(path.read_bytes())
        _OIDS[key] = digest.hexdigest()
    return _OIDS[key]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        self.server.requests.append(f"{self.command} {self.path}")

    def _send(
        self, status: int, body: bytes | dict | list = b"", headers: dict | None = None, file: bool = False
    ) -> None:
        """Send ``body`` (JSON unless bytes); a ``file``'s at ``bytes_per_second`` when that is set."""
        headers = dict(headers or {})
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        rate = self.server.bytes_per_second if file else None
        if not rate:
            self.wfile.write(body)
            return
        for start in range(0, len(body), _CHUNK):
            self.wfile.write(body[start : start + _CHUNK])
            self.wfile.flush()
            time.sleep(_CHUNK / rate)

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        root = self.server.root
        try:
            if m := re.match(rf"^/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", url.path):
                repo = _Repo(root, m["kind"], m["repo"])
                repo.check_revision(m["rev"])
                return self._send(200, self._info(repo))
            if m := re.match(rf"^/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", url.path):
                repo = _Repo(root, m["kind"], m["repo"])
                repo.check_revision(m["rev"])
                expand = query.get("expand", "false").lower() == "true"
                folder = unquote(m["path"] or "").strip("/")
                names = repo.listing(folder, query.get("recursive", "") == "true")
                return self._send(200, [repo.entry(name, expand) for name in names])
            m = re.match(rf"^/api/{_REPO}/paths-info/(?P<rev>[^/]+)$", url.path)
            if m and self.command == "POST":
                repo = _Repo(root, m["kind"], m["repo"])
                repo.check_revision(m["rev"])
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                expand = form.get("expand", ["false"])[-1].lower() == "true"
                names = [p.strip("/") for p in form.get("paths", [])]
                return self._send(200, [repo.entry(n, expand) for n in names if (repo.path / n).exists()])
            if m := _RESOLVE.match(url.path):
                repo = _Repo(root, m["kind"] or "models", m["repo"])
                repo.check_revision(m["rev"])
                return self._resolve(repo, unquote(m["path"]))
            raise _Missing("EntryNotFound", f"no such endpoint: {self.command} {url.path}")
        except _Missing as missing:
            headers = {"X-Error-Code": missing.code, "X-Error-Message": str(missing)}
            self._send(404, {"error": str(missing)}, headers)

    def _info(self, repo: _Repo) -> dict:
        return {
            "_id": repo.sha[:24],
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": repo.sha,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": {},
            "lastModified": _DATE,
            "createdAt": _DATE,
            "siblings": [{"rfilename": name} for name in repo.files],
        }

    def _resolve(self, repo: _Repo, name: str) -> None:
        path = repo.path / name
        if not path.is_file():
            raise _Missing("EntryNotFound", f"{name} does not exist in {repo.id}")
        data = path.read_bytes()
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{_oid(path)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        wanted = _RANGE.match(self.headers.get("Range", ""))
        if wanted is None or not data:
            return self._send(200, data, headers, file=True)
        first, last = wanted.groups()
        if first:
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        else:  # a suffix: the last N bytes
            start, end = max(0, len(data) - int(last)), len(data) - 1
        if start >= len(data):
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(206, data[start : end + 1], headers, file=True)

    do_GET = do_HEAD = do_POST = _route


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[str] = []
        self.bytes_per_second: float | None = None


class Hub:
    """The emulator, serving ``root`` on ``127.0.0.1`` at a free port, in a background thread.

    ``url`` is what ``HF_ENDPOINT`` is set to; ``requests`` lists every ``METHOD path`` served;
    setting ``bytes_per_second`` (None: as fast as it can) slows down the files it serves from then on.
    """

    def __init__(self, root: Path):
        self._server = _Server(Path(root))
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def root(self) -> Path:
        return self._server.root

    @property
    def requests(self) -> list[str]:
        return self._server.requests

    @property
    def bytes_per_second(self) -> float | None:
        return self._server.bytes_per_second

    @bytes_per_second.setter
    def bytes_per_second(self, rate: float | None) -> None:
        self._server.bytes_per_second = rate

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
