"""A fake Hugging Face Hub on 127.0.0.1 for offline push/pull tests.

`FakeHub` speaks the subset of the Hub's HTTP protocol that `huggingface_hub` 2.x (with `HF_HUB_DISABLE_XET=1`),
transformers and peft use to create repos, upload (regular files inline, large files through the LFS batch API with
basic transfer) and download (`/resolve`, tree listings, repo info). Repos live in memory with their full commit
history, and every request is recorded so tests can assert on what the client sent. Clients must not use Xet (the
client picks it on its own when `hf_xet` is installed): `FakeHub.client_env()` sets `HF_HUB_DISABLE_XET=1`.

Example:

```python
>>> from huggingface_hub import HfApi
>>> with FakeHub() as hub:
...     api = HfApi(endpoint=hub.url, token=hub.token)
...     _ = api.create_repo("test-user/tiny")
...     _ = api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="test-user/tiny")
...     hub.files("test-user/tiny")["config.json"]
b'{}'
```
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Patterns of the Hub's default `.gitattributes`: matching files are stored with LFS whatever their size.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.mlmodel *.model *.msgpack *.npy *.npz *.onnx *.ot"
    " *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst"
    " *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class StoredFile:
    """One file of a repo snapshot; `oid` is the git blob id (of the LFS pointer for LFS files), as on the Hub."""

    content: bytes
    lfs: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        spec = "version https://git-lfs.github.com/spec/v1"
        return f"{spec}\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()

    @property
    def oid(self) -> str:
        blob = self.pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()


@dataclass
class Commit:
    """A commit as the server stored it: the full snapshot after it, and what it touched."""

    oid: str
    message: str
    files: dict[str, StoredFile]
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    description: str = ""
    parent: str | None = None
    date: str = field(default_factory=_now)

    @property
    def lfs_paths(self) -> list[str]:
        return [path for path in self.added if self.files[path].lfs]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    history: list[Commit]
    refs: dict[str, str]  # branch or "refs/pr/N" -> commit oid
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id

    def resolve(self, revision: str) -> Commit:
        oid = self.refs.get(revision.removeprefix("refs/heads/"), revision)
        for commit in self.history:
            if commit.oid == oid:
                return commit
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, list[str]]
    route: str  # e.g. "create_repo", "preupload", "lfs_batch", "lfs_upload", "commit", "resolve"; "unhandled"
    status: int = 0
    authorized: bool = False


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers or {}, extra


_API = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    (method, name, re.compile(pattern))
    for method, name, pattern in [
        ("GET", "whoami", r"/api/whoami-v2"),
        ("GET", "agent_harnesses", r"/api/agent-harnesses"),
        ("POST", "validate_yaml", r"/api/validate-yaml"),
        ("POST", "create_repo", r"/api/repos/create"),
        ("DELETE", "delete_repo", r"/api/repos/delete"),
        ("GET", "repo_info", _API + r"(?:/revision/(?P<rev>[^/]+))?"),
        ("GET", "tree", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"),
        ("POST", "paths_info", _API + r"/paths-info/(?P<rev>[^/]+)"),
        ("GET", "list_commits", _API + r"/commits/(?P<rev>[^/]+)"),
        ("GET", "refs", _API + r"/refs"),
        ("POST", "create_branch", _API + r"/branch/(?P<rev>[^/]+)"),
        ("POST", "preupload", _API + r"/preupload/(?P<rev>[^/]+)"),
        ("POST", "commit", _API + r"/commit/(?P<rev>[^/]+)"),
        ("GET", "xet_token", _API + r"/xet-(?:read|write)-token(?:/.*)?"),
        ("POST", "lfs_batch", _GIT + r"\.git/info/lfs/objects/batch"),
        ("PUT", "lfs_upload", r"/__lfs/(?P<type>\w+)/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})"),
        ("POST", "lfs_verify", r"/__lfs/(?P<type>\w+)/(?P<repo>[^/]+/[^/]+)/verify"),
        ("GET", "resolve", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
        ("HEAD", "resolve", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
    ]
]


class FakeHub:
    """In-memory Hub served on `http://127.0.0.1:<ephemeral port>` by a background thread.

    Args:
        token: the only token accepted (`Authorization: Bearer <token>`) for writes, whoami and private repos.
        user: the user name returned by whoami, and the namespace of repos created without one.
        lfs_threshold: files of at least this many bytes are stored with LFS (the Hub uses 10 MiB), besides any
            file matching `LFS_PATTERNS` (e.g. `*.safetensors`).
        fail_commits: answer every commit with a 500, to test failure handling (can be toggled while running).

    Records: `requests` (every request, in order), `calls(route)`, `commits(repo_id)` (pushed commits, oldest
    first), `lfs_uploads` (LFS objects received), `files(repo_id, revision)` (the repo content as bytes).
    """

    def __init__(
        self,
        *,
        token: str = "hf_fake_hub_token",
        user: str = "test-user",
        lfs_threshold: int = 10 * 1024 * 1024,
        fail_commits: bool = False,
    ):
        self.token, self.user, self.lfs_threshold, self.fail_commits = token, user, lfs_threshold, fail_commits
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RequestRecord] = []
        self.lfs_uploads: list[tuple[str, str, int]] = []  # (repo_id, sha256, size)
        self.lock = threading.RLock()
        self._ids = itertools.count()
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeHub:
        serve = lambda: self._httpd.serve_forever(poll_interval=0.05)  # noqa: E731 (a short poll: fast stop())
        self._thread = threading.Thread(target=serve, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        with self.lock:  # also end kept-alive connections, so a stopped Hub stops answering
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- what tests read -------------------------------------------------------------------------------------
    def calls(self, *routes: str) -> list[RequestRecord]:
        """Recorded requests of the given route names (see `ROUTES`), e.g. `hub.calls("lfs_upload", "commit")`."""
        return [record for record in self.requests if record.route in routes]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """Commits pushed by clients (the repo's initial `.gitattributes` commit excluded), oldest first."""
        return self.repo(repo_id, repo_type).history[1:]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        commit = self.repo(repo_id, repo_type).resolve(revision)
        return {path: stored.content for path, stored in commit.files.items()}

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo server-side (as `POST /api/repos/create` does), with the Hub's initial commit."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
                raise HubError(409, None, f"You already created this {repo_type} repo", url=url)
            initial = Commit(self._new_oid(repo_id), "initial commit", {".gitattributes": StoredFile(GITATTRIBUTES)})
            repo = Repo(repo_id, repo_type, private, [initial], {"main": initial.oid})
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def client_env(self, home: str, authenticated: bool = True) -> dict[str, str]:
        """Environment that points huggingface_hub / transformers / peft / datasets at this server."""
        env = {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_EVALUATE_OFFLINE": "1",
        }
        if authenticated:
            env["HF_TOKEN"] = self.token
        return env

    def _new_oid(self, repo_id: str) -> str:
        return hashlib.sha1(f"{repo_id}:{next(self._ids)}:{time.time_ns()}".encode()).hexdigest()

    # ----- protocol ----------------------------------------------------------------------------------------------
    def handle(self, route: str, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        if route in ("whoami", "create_repo", "delete_repo", "preupload", "commit", "lfs_batch", "create_branch"):
            request.require_auth()
        if route == "whoami":
            auth = {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": "write"}}
            return 200, {"type": "user", "id": "0" * 24, "name": self.user, "orgs": [], "auth": auth}, {}
        if route == "agent_harnesses":
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if route == "xet_token":
            raise HubError(404, None, "The fake Hub does not speak Xet: run clients with HF_HUB_DISABLE_XET=1")
        if route == "validate_yaml":
            return _validate_yaml(request.json().get("content", ""))
        if route in ("create_repo", "delete_repo"):
            body = request.json()
            repo_id = f"{body.get('organization') or self.user}/{body['name']}"
            return getattr(self, f"_{route}")(repo_id, body.get("type") or "model", body)
        repo_type = params.get("type", "model").removesuffix("s")  # "models" (API), "datasets/" (git), "model" (LFS)
        # LFS transfer URLs stand for the Hub's pre-signed storage URLs: the client sends them no token.
        repo = self._get_repo(params["repo"], repo_type, request, presigned=route in ("lfs_upload", "lfs_verify"))
        with self.lock:
            return getattr(self, f"_{route}")(repo, params, request)

    def _get_repo(self, repo_id: str, repo_type: str, request: _Request, presigned: bool = False) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not request.authorized and not presigned):
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_type}s/{repo_id}")
        return repo

    def _create_repo(self, repo_id: str, repo_type: str, body: dict) -> tuple[int, Any, dict[str, str]]:
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo = self.create_repo(repo_id, repo_type, private)
        return 200, {"url": f"{self.url}/{repo.url_path}", "name": repo_id, "id": repo_id}, {}

    def _delete_repo(self, repo_id: str, repo_type: str, body: dict) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        return 200, {}, {}

    def _repo_info(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        commit = repo.resolve(params.get("rev") or "main")
        blobs = request.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [_sibling(path, stored, blobs) for path, stored in sorted(commit.files.items())]
        author = repo.repo_id.split("/")[0]
        info = {"id": repo.repo_id, "_id": repo.history[0].oid[:24], "author": author, "sha": commit.oid}
        info.update(private=repo.private, gated=False, disabled=False, downloads=0, likes=0, tags=[])
        info.update(lastModified=commit.date, createdAt=repo.history[0].date, siblings=siblings)
        readme = commit.files.get("README.md")
        if readme is not None and _validate_yaml(readme.content.decode(errors="replace"))[0] == 200:
            info["cardData"] = _front_matter(readme.content.decode(errors="replace")) or {}
        return 200, info, {}

    def _tree(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        commit = repo.resolve(params["rev"])
        recursive = request.query.get("recursive", ["false"])[0].lower() == "true"
        base = params.get("path", "").strip("/")
        prefix = f"{base}/" if base else ""
        entries: dict[str, dict] = {}
        for path, stored in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if not recursive and len(parts) > 1:
                entries.setdefault(prefix + parts[0], _folder_entry(prefix + parts[0]))
                continue
            for depth in range(1, len(parts)):  # intermediate folders of a recursive listing
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, _folder_entry(folder))
            entries[path] = _entry(path, stored)
        if base and not entries:
            raise HubError(404, "EntryNotFound", f"{base} does not exist on {params['rev']}", _commit_header(commit))
        return 200, sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"])), {}

    def _paths_info(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        commit = repo.resolve(params["rev"])
        body = request.json() if request.body.lstrip().startswith(b"{") else parse_qs(request.body.decode())
        paths = body.get("paths", [])
        infos = []
        for path in [paths] if isinstance(paths, str) else paths:
            path = path.strip("/")
            if path in commit.files:
                infos.append(_entry(path, commit.files[path]))
            elif any(p.startswith(f"{path}/") for p in commit.files):
                infos.append(_folder_entry(path))
        return 200, infos, {}

    def _list_commits(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        by_oid = {c.oid: c for c in repo.history}
        commit: Commit | None = repo.resolve(params["rev"])
        items = []
        while commit is not None:
            authors = [{"user": self.user}]
            title, message = commit.message, commit.description
            items.append(
                {"id": commit.oid, "title": title, "message": message, "authors": authors, "date": commit.date}
            )
            commit = by_oid.get(commit.parent) if commit.parent else None
        return 200, items, {}

    def _refs(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        refs = {"branches": [], "converts": [], "tags": [], "pullRequests": []}
        for name, oid in repo.refs.items():
            kind, ref = ("pullRequests", name) if name.startswith("refs/pr/") else ("branches", f"refs/heads/{name}")
            refs[kind].append({"name": name, "ref": ref, "targetCommit": oid})
        return 200, refs, {}

    def _create_branch(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        if params["rev"] in repo.refs:
            raise HubError(409, None, f"Reference already exists: {params['rev']}")
        start = (request.json() if request.body else {}).get("startingPoint") or "main"
        repo.refs[params["rev"]] = repo.resolve(start).oid
        return 200, {}, {}

    def _preupload(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        commit = repo.resolve(params["rev"])
        files = []
        for item in request.json().get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = size >= self.lfs_threshold or any(fnmatch.fnmatch(path.split("/")[-1], p) for p in LFS_PATTERNS)
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": commit.oid}, {}

    def _lfs_batch(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        body = request.json()
        if body.get("operation") != "upload":
            raise HubError(400, None, "Only the LFS `upload` operation is supported by the fake Hub")
        base = f"{self.url}/__lfs/{repo.repo_type}/{repo.repo_id}"
        objects = []
        for obj in body.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in repo.lfs_objects:
                verify = {"href": f"{base}/verify", "header": {}}
                answer.update(
                    authenticated=True, actions={"upload": {"href": f"{base}/{obj['oid']}"}, "verify": verify}
                )
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_upload(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        if hashlib.sha256(request.body).hexdigest() != params["oid"]:
            raise HubError(400, None, "Uploaded content does not match its sha256 oid")
        repo.lfs_objects[params["oid"]] = request.body
        self.lfs_uploads.append((repo.repo_id, params["oid"], len(request.body)))
        return 200, b"", {"ETag": f'"{params["oid"]}"'}

    def _lfs_verify(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        body = request.json()
        data = repo.lfs_objects.get(body.get("oid", ""))
        if data is None or len(data) != body.get("size"):
            raise HubError(404, None, f"LFS object {body.get('oid')} was not uploaded")
        return 200, {}, {}

    def _commit(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        if self.fail_commits:
            raise HubError(500, None, "Internal Error (injected by FakeHub.fail_commits)")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, None, "A commit payload starts with a `header` line")
        header, branch = lines[0]["value"], params["rev"]
        pr_url = None
        if request.query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
            pr_num = sum(name.startswith("refs/pr/") for name in repo.refs) + 1
            branch, pr_url = f"refs/pr/{pr_num}", f"{self.url}/{repo.url_path}/discussions/{pr_num}"
            repo.refs[branch] = repo.resolve(params["rev"]).oid
        head = repo.resolve(branch)
        if branch not in repo.refs:
            raise HubError(400, None, f"Cannot commit to a commit oid ({branch}): pass a branch")
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
        commit = Commit(self._new_oid(repo.repo_id), header.get("summary", ""), dict(head.files), parent=head.oid)
        commit.description = header.get("description", "")
        for line in lines[1:]:
            _apply_operation(commit, repo, line.get("key"), line.get("value", {}))
        repo.history.append(commit)
        repo.refs[branch] = commit.oid
        url = f"{self.url}/{repo.url_path}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": pr_url}, {}

    def _resolve(self, repo: Repo, params: dict[str, str], request: _Request) -> tuple[int, Any, dict[str, str]]:
        commit = repo.resolve(params["rev"])
        stored = commit.files.get(params["path"])
        if stored is None:
            raise HubError(404, "EntryNotFound", f"{params['path']} does not exist", _commit_header(commit))
        headers = {**_commit_header(commit), "ETag": f'"{stored.oid}"', "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.content))})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("Range", ""))
        if match and stored.content:
            size = len(stored.content)
            start = int(match[1]) if match[1] else size - int(match[2])
            end = int(match[2]) if match[1] and match[2] else size - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return 206, stored.content[start : end + 1], headers
        return 200, stored.content, headers


def _apply_operation(commit: Commit, repo: Repo, key: str | None, value: dict) -> None:
    path = str(value.get("path", "")).strip("/")
    if key == "file":
        content = value["content"]
        data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
        commit.files[path] = StoredFile(data)
        commit.added.append(path)
    elif key == "lfsFile":
        if value.get("oid") not in repo.lfs_objects:
            raise HubError(400, None, f"LFS object {value.get('oid')} for {path} was never uploaded")
        commit.files[path] = StoredFile(repo.lfs_objects[value["oid"]], lfs=True)
        commit.added.append(path)
    elif key in ("deletedFile", "deletedFolder"):
        doomed = [p for p in commit.files if p == path or (key == "deletedFolder" and p.startswith(f"{path}/"))]
        if not doomed:
            raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
        for doomed_path in doomed:
            del commit.files[doomed_path]
        commit.deleted.extend(doomed)
    else:
        raise HubError(400, None, f"Unsupported commit operation `{key}`")


def _entry(path: str, stored: StoredFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": stored.oid, "size": len(stored.content), "path": path}
    if stored.lfs:
        entry["lfs"] = {"oid": stored.sha256, "size": len(stored.content), "pointerSize": len(stored.pointer)}
    return entry


def _sibling(path: str, stored: StoredFile, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": path}
    sibling: dict[str, Any] = {"rfilename": path, "size": len(stored.content), "blobId": stored.oid}
    if stored.lfs:
        sibling["lfs"] = {"sha256": stored.sha256, "size": len(stored.content), "pointerSize": len(stored.pointer)}
    return sibling


def _folder_entry(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}


def _commit_header(commit: Commit) -> dict[str, str]:
    return {"X-Repo-Commit": commit.oid}


def _front_matter(content: str) -> Any:
    match = re.match(r"\A---\r?\n(.*?)\r?\n---", content, flags=re.DOTALL)
    return yaml.safe_load(match[1]) if match else None


def _validate_yaml(content: str) -> tuple[int, Any, dict[str, str]]:
    try:
        metadata = _front_matter(content)
    except yaml.YAMLError as error:
        return 400, {"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, {}
    if metadata is not None and not isinstance(metadata, dict):
        return 400, {"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []}, {}
    return 200, {"errors": [], "warnings": []}, {}


@dataclass
class _Request:
    hub: FakeHub
    headers: Any
    query: dict[str, list[str]]
    body: bytes

    @property
    def authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def require_auth(self) -> None:
        if not self.authorized:
            given = "Invalid credentials in Authorization header" if self.headers.get("Authorization") else None
            raise HubError(401, None, given or "Authentication required: send `Authorization: Bearer <token>`")

    def json(self) -> dict[str, Any]:
        return json.loads(self.body or b"{}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    hub: FakeHub

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub.lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `FakeHub.requests`
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _dispatch(self) -> None:
        body = self._read_body()  # always drain the body so the connection can be reused
        split = urlsplit(self.path)
        request = _Request(self.hub, self.headers, parse_qs(split.query), body)
        record = RequestRecord(self.command, split.path, request.query, "unhandled", authorized=request.authorized)
        with self.hub.lock:
            self.hub.requests.append(record)
        try:
            status, payload, headers = self._route(record, request)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            status, payload = error.status, {"error": error.message, **error.extra}
        except Exception as error:  # a bug in the fake Hub: answer 501 (which clients do not retry) and keep serving
            status, payload, headers = 501, {"error": f"fake Hub error: {error!r}"}, {}
        record.status = status
        self._send(status, payload, headers)

    def _route(self, record: RequestRecord, request: _Request) -> tuple[int, Any, dict[str, str]]:
        for method, name, pattern in ROUTES:
            match = pattern.fullmatch(record.path)
            if match and method == self.command:
                record.route = name
                params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                return self.hub.handle(name, params, request)
        raise HubError(404, None, f"The fake Hub does not implement {self.command} {record.path}")

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers.setdefault(
            "Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json"
        )
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def block_non_loopback(set_attribute: Callable[[Any, str, Any], None] = setattr) -> list[str]:
    """Make sockets refuse any host but 127.0.0.1/localhost; returns the (growing) list of blocked hosts.

    Pass `monkeypatch.setattr` to undo it after a test. Blocked connections raise `ConnectionRefusedError`, which
    clients often swallow (they fall back to the cache), hence the list: assert it stays empty.
    """
    blocked: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(host: Any) -> None:
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host not in LOOPBACK_HOSTS:
            blocked.append(host)
            raise ConnectionRefusedError(f"offline tests: connection to {host} blocked (only 127.0.0.1 is allowed)")

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            check(host)
        return getaddrinfo(host, *args, **kwargs)

    def guard(real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                check(address[0])
            return real(sock, address)

        return guarded

    set_attribute(socket.socket, "connect", guard(connect))
    set_attribute(socket.socket, "connect_ex", guard(connect_ex))
    set_attribute(socket, "getaddrinfo", guarded_getaddrinfo)
    return blocked


# Runs a snippet file with sockets limited to loopback; the hosts it tried to reach are reported at exit.
_RUNNER = """\
import atexit as _atexit, json as _json, runpy as _runpy, sys as _sys
_sys.path.insert(0, {tests_dir!r})
import hub_server as _hub_server
_blocked = _hub_server.block_non_loopback()
_atexit.register(lambda: open({report!r}, "w").write(_json.dumps(_blocked)))
_runpy.run_path({snippet!r}, run_name="__main__")
"""
_CLIENT_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")  # dropped from the parent env (offline flags, caches)


def run_against_hub(
    server: FakeHub,
    code: str,
    *,
    workdir: str | os.PathLike | None = None,
    authenticated: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> str:
    """Run Python `code` in a fresh interpreter whose Hub is `server`; return its stdout.

    The child gets `server.client_env(...)` (HF_ENDPOINT, HF_HUB_DISABLE_XET=1, HF_TOKEN unless
    `authenticated=False`, a private HF_HOME under `workdir`, no HF_HUB_OFFLINE), runs in `workdir`, and may only
    open sockets to 127.0.0.1. Raises `AssertionError` with the child's output if it fails or tried another host.
    """
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fake-hub-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    snippet, report = workdir / "snippet.py", workdir / "blocked_hosts.json"
    snippet.write_text(textwrap.dedent(code))
    runner = _RUNNER.format(tests_dir=str(Path(__file__).parent), report=str(report), snippet=str(snippet))
    child_env = {key: value for key, value in os.environ.items() if not key.startswith(_CLIENT_ENV_PREFIXES)}
    child_env.update(server.client_env(str(workdir / "hf_home"), authenticated), **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-c", runner], cwd=workdir, env=child_env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        raise AssertionError(f"snippet run against the fake Hub failed (exit code {proc.returncode})\n{output}")
    blocked = json.loads(report.read_text()) if report.exists() else []
    if blocked:
        raise AssertionError(
            f"snippet tried to reach {sorted(set(blocked))}; only the fake Hub at {server.url} is allowed"
        )
    return proc.stdout
