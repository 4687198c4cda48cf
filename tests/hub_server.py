"""A small in-memory stand-in for the Hugging Face Hub HTTP API, for end-to-end tests on 127.0.0.1.

It answers the requests the real ``huggingface_hub`` client sends to publish a model repository and
to download it back:

    POST /api/repos/create                         create a repo (409 when it exists)
    POST /api/validate-yaml                        README front matter must parse as a YAML mapping
    POST /api/models/{repo}/preupload/{rev}        every file is "regular" (inline base64 in the commit)
    POST /api/models/{repo}/commit/{rev}           NDJSON: header, file (base64), deletedFile
    POST /api/models/{repo}/branch/{branch}        create a branch from main
    GET  /api/models/{repo}[/revision/{rev}]       repo info (sha, siblings)
    HEAD/GET /{repo}/resolve/{rev}/{path}          file metadata (X-Repo-Commit, ETag) and bytes

Writes, and reads of private repos, need ``Authorization: Bearer <token>``. The server runs in a
daemon thread, stops itself after ``lifetime`` seconds, and refuses bodies over ``max_body`` bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data`` (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One model repository: branches -> (head commit, files at that commit)."""

    private: bool
    heads: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def commit(self, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = self.heads.get(branch, "")
        digest = hashlib.sha1(f"{parent}\n{message}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_oid(files[path])}\n".encode())
        self.heads[branch], self.files[branch] = digest.hexdigest(), dict(files)
        self.messages.append(message)
        return self.heads[branch]


class FakeHub:
    """Start with ``with FakeHub(token="hf_x") as hub:``; ``hub.url`` is the endpoint for ``HF_ENDPOINT``."""

    def __init__(self, token: str, lifetime: float = 120.0, max_body: int = 64 << 20):
        self.token, self.max_body = token, max_body
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, authorised)
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def __enter__(self) -> FakeHub:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving (idempotent); later connections are refused."""
        self._timer.cancel()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The files at the head of ``branch`` of ``repo_id``."""
        return dict(self.repos[repo_id].files[branch])


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        # -- plumbing -------------------------------------------------------------------------
        def _authorised(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _body(self) -> bytes:
            size = int(self.headers.get("Content-Length") or 0)
            if size > hub.max_body:
                raise ValueError(f"body of {size} bytes is over the limit")
            return self.rfile.read(size)

        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            head: bool = False,
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(
            self, status: int, obj: Any, headers: dict[str, str] | None = None, head: bool = False
        ) -> None:
            self._send(status, json.dumps(obj).encode(), headers, head)

        def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head)

        def _route(self, method: str) -> None:
            path = urlsplit(self.path).path
            authorised = self._authorised()
            with hub.lock:
                hub.requests.append((method, path, authorised))
            try:
                body = self._body() if method == "POST" else b""
                with hub.lock:
                    self._dispatch(method, path, body, authorised)
            except (ValueError, KeyError, json.JSONDecodeError) as err:
                self._error(400, "BadRequest", f"bad request: {err}")

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._route("HEAD")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        # -- API ------------------------------------------------------------------------------
        def _dispatch(self, method: str, path: str, body: bytes, authorised: bool) -> None:
            parts = [unquote(p) for p in path.strip("/").split("/")]
            head = method == "HEAD"
            if method == "POST" and parts[:1] == ["api"] and not authorised:
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create(json.loads(body))
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body)["content"])
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, rest = "/".join(parts[2:4]), parts[4:]
                repo = self._repo(repo_id, authorised, head)
                if repo is None:
                    return None
                if method == "POST" and rest[:1] == ["preupload"]:
                    files = json.loads(body)["files"]
                    modes = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                    return self._json(200, {"files": modes, "commitOid": repo.heads["main"]})
                if method == "POST" and rest[:1] == ["commit"]:
                    return self._commit(repo_id, repo, "/".join(rest[1:]), body)
                if method == "POST" and rest[:1] == ["branch"]:
                    branch = "/".join(rest[1:])
                    if branch in repo.heads:
                        return self._error(409, "Conflict", f"branch {branch} already exists")
                    repo.heads[branch], repo.files[branch] = repo.heads["main"], dict(repo.files["main"])
                    return self._json(200, {})
                if method == "GET" and (not rest or rest[0] == "revision"):
                    return self._info(repo_id, repo, "/".join(rest[1:]) or "main")
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                repo = self._repo("/".join(parts[:2]), authorised, head)
                if repo is not None:
                    return self._resolve(repo, parts[3], "/".join(parts[4:]), head)
                return None
            return self._error(404, "NotFound", f"no route for {method} {path}", head)

        def _repo(self, repo_id: str, authorised: bool, head: bool) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not authorised):
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}", head)
                return None
            return repo

        def _create(self, payload: dict) -> None:
            repo_id = (
                f"{payload['organization']}/{payload['name']}"
                if payload.get("organization")
                else payload["name"]
            )
            url = f"{hub.url}/{repo_id}"
            if repo_id in hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
            repo.commit("main", {}, "initial commit")
            hub.repos[repo_id] = repo
            return self._json(200, {"url": url, "name": repo_id})

        def _validate_yaml(self, content: str) -> None:
            if not content.startswith("---\n") or "\n---\n" not in content[4:]:
                return self._json(
                    200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
                )
            front = content[4:].split("\n---\n", 1)[0]
            try:
                meta = yaml.safe_load(front)
            except yaml.YAMLError as err:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            if not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
            return self._json(200, {"errors": [], "warnings": []})

        def _commit(self, repo_id: str, repo: Repo, branch: str, body: bytes) -> None:
            if branch not in repo.heads:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            files, summary = dict(repo.files[branch]), ""
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value["summary"]
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError("only base64 file entries are supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"])
                else:
                    raise ValueError(f"unsupported commit entry {key!r} (all uploads are regular)")
            oid = repo.commit(branch, files, summary)
            return self._json(
                200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
            )

        def _info(self, repo_id: str, repo: Repo, revision: str) -> None:
            branch = self._branch(repo, revision)
            if branch is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            siblings = [{"rfilename": p} for p in sorted(repo.files[branch])]
            return self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.heads[branch],
                    "private": repo.private,
                    "siblings": siblings,
                    "tags": [],
                },
            )

        def _branch(self, repo: Repo, revision: str) -> str | None:
            if revision in repo.heads:
                return revision
            return next((b for b, sha in repo.heads.items() if sha == revision), None)

        def _resolve(self, repo: Repo, revision: str, filename: str, head: bool) -> None:
            branch = self._branch(repo, revision)
            if branch is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            sha = repo.heads[branch]
            data = repo.files[branch].get(filename)
            if data is None:
                msg = f"Entry Not Found for url: {filename}"
                return self._json(
                    404,
                    {"error": msg},
                    {"X-Error-Code": "EntryNotFound", "X-Error-Message": msg, "X-Repo-Commit": sha},
                    head,
                )
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(data)}"'}
            return self._send(200, data, headers, head, content_type="application/octet-stream")

    return Handler
