"""The ASGI app of the built-in Hub: routing, request validation and error mapping.

Routing is done on the *raw* path, split on ``/`` and then unquoted segment by segment: the
client percent-encodes revisions as one segment (``refs%2Fpr%2F1``), which a decoded path would
split in two. Every failure leaves as a JSON error with ``X-Error-Code``/``X-Error-Message``;
a malformed request is a 4xx, and only a bug in this server can produce a 500.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from loradex.documents import MalformedDocument, parse_json
from loradex.errors import LoradexError
from registry.cards import parse_front_matter
from registry.server.blobstore import BlobMismatch, BlobStore, BlobTooLarge, is_sha256
from registry.server.commit_request import parse_commit_body
from registry.server.errors import HubHTTPError, bad_request
from registry.server.repos import DEFAULT_BRANCH
from registry.server.service import HubService
from registry.server.types import Identity, ServerConfig
from registry.server.validation import check_name, parse_range, reject_nul

log = logging.getLogger("loradex.server")

MAX_JSON_BODY = 8 * 1024 * 1024
MAX_HEADER_BYTES = 32 * 1024
CHUNK = 256 * 1024
SMALL_FILE = 1024 * 1024
CONFIG_ENV = "LORADEX_SERVE_CONFIG"

Handler = Callable[[Request, list[str]], Awaitable[Response]]


def load_or_create_secret(data_dir: Path) -> bytes:
    """The HMAC key signing LFS upload URLs: ``DATA/secret.key``, created once (0600)."""
    path = data_dir / "secret.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) < 32:
            raise LoradexError(f"{path} is corrupt (shorter than 32 bytes); delete it") from None
        return secret
    secret = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    return secret


def error_response(exc: HubHTTPError, head: bool = False) -> Response:
    """A JSON error with the headers the client maps exceptions from."""
    headers = {"X-Error-Message": _header_safe(exc.message), **exc.headers}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    if head:
        return Response(status_code=exc.status, headers=headers, media_type="application/json")
    return JSONResponse(
        {"error": exc.message, **exc.extra}, status_code=exc.status, headers=headers
    )


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:1000]


class HubApp:
    """ASGI callable serving the Hub API for one :class:`HubService`."""

    def __init__(self, service: HubService) -> None:
        self.service = service
        self.config = service.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        head = request.method == "HEAD"
        try:
            response = await self.dispatch(request)
        except ClientDisconnect:
            return
        except HubHTTPError as exc:
            response = error_response(exc, head)
        except (
            LoradexError
        ) as exc:  # our own validation (e.g. InvalidAdapter) is the client's fault
            response = error_response(HubHTTPError(400, str(exc)), head)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            response = error_response(HubHTTPError(500, "internal server error"), head)
        await response(scope, receive, send)

    def base_url(self, request: Request) -> str:
        """Scheme+host the client used (every URL we return must start with it)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        if any(c in host for c in " /\\?#@"):
            raise bad_request("invalid Host header")
        return f"{request.url.scheme}://{host}"

    async def identity(self, request: Request) -> Identity | None:
        """The caller's identity from the Authorization header (401 on a bad token)."""
        return await run_in_threadpool(
            self.service.authenticate, request.headers.get("authorization")
        )

    async def dispatch(self, request: Request) -> Response:
        """Route one request by method and raw path segments."""
        header_bytes = sum(len(k) + len(v) for k, v in request.scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            raise HubHTTPError(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        raw_text = raw.decode("latin-1").split("?", 1)[0]
        try:
            seg = [unquote(s, errors="strict") for s in raw_text.split("/")[1:]]
        except UnicodeDecodeError:
            raise bad_request("path is not valid UTF-8") from None
        if any("\0" in s for s in seg):
            raise bad_request("NUL in path")
        # PostgreSQL text cannot hold NUL: refuse it at the edge, in every query parameter.
        if any("\0" in k or "\0" in v for k, v in request.query_params.multi_items()):
            raise bad_request("NUL in query parameters")
        method = request.method
        n = len(seg)
        if n >= 2 and seg[0] == "api":
            if seg[1] == "models":
                if n == 2 and method == "GET":
                    return await self.list_models(request)
                if n >= 4:
                    repo_id = self.repo_id(seg[2], seg[3])
                    rest = seg[4:]
                    if not rest and method == "GET":
                        return await self.model_info(request, repo_id, DEFAULT_BRANCH)
                    if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                        return await self.model_info(request, repo_id, rest[1])
                    if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                        return await self.tree(request, repo_id, rest[1], "/".join(rest[2:]))
                    if rest == ["refs"] and method == "GET":
                        return await self.refs(request, repo_id)
                    if len(rest) == 2 and rest[0] == "commits" and method == "GET":
                        return await self.commits(request, repo_id, rest[1])
                    if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                        return await self.paths_info(request, repo_id, rest[1])
                    if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                        return await self.preupload(request, repo_id, rest[1])
                    if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                        return await self.commit(request, repo_id, rest[1])
            if seg[1:] == ["whoami-v2"] and method == "GET":
                ident = await self.identity(request)
                return JSONResponse(self.service.whoami(ident))
            if seg[1:] == ["repos", "create"] and method == "POST":
                return await self.create_repo(request)
            if seg[1:] == ["repos", "delete"] and method == "DELETE":
                return await self.delete_repo(request)
            if seg[1:] == ["validate-yaml"] and method == "POST":
                return await self.validate_yaml(request)
            if n == 3 and seg[1] == "lfs-upload" and method == "PUT":
                return await self.lfs_upload(request, seg[2])
            if n == 3 and seg[1] == "lfs-verify" and method == "POST":
                return await self.lfs_verify(request, seg[2])
            raise HubHTTPError(404, f"no such endpoint: {method} {raw_text}")
        if n >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = self.repo_id(seg[0], seg[1])
            return await self.resolve(request, repo_id, seg[3], "/".join(seg[4:]))
        if (
            n == 6
            and seg[1].endswith(".git")
            and seg[2:] == ["info", "lfs", "objects", "batch"]
            and method == "POST"
        ):
            repo_id = self.repo_id(seg[0], seg[1][: -len(".git")])
            return await self.lfs_batch(request, repo_id)
        raise HubHTTPError(404, f"no such endpoint: {method} {raw_text}")

    @staticmethod
    def repo_id(namespace: str, name: str) -> str:
        """Validate the two halves of a repo id taken from a URL."""
        try:
            check_name(namespace, "namespace")
            check_name(name, "repo name")
        except HubHTTPError:
            raise HubHTTPError(
                404,
                f"Repository Not Found for url: {namespace}/{name} (invalid repo id).",
                "RepoNotFound",
            ) from None
        return f"{namespace}/{name}"

    # ------------------------------------------------------------ reads

    async def list_models(self, request: Request) -> Response:
        """``GET /api/models`` with search/author/filter/sort/limit and cursor pagination."""
        params = request.query_params
        try:
            limit = int(params.get("limit", "1000"))
        except ValueError:
            raise bad_request("limit must be an integer") from None
        if limit < 1:
            raise bad_request("limit must be positive")
        limit = min(limit, 1000)
        expand = params.getlist("expand")
        full = params.get("full", "").lower() in ("1", "true")
        filters = [f for f in params.getlist("filter") if f]
        with_siblings = full or "siblings" in expand
        ident = await self.identity(request)
        items, next_cursor = await run_in_threadpool(
            lambda: self.service.list_models(
                ident,
                search=params.get("search") or None,
                author=params.get("author") or None,
                filters=filters,
                sort=params.get("sort") or None,
                limit=limit,
                cursor=params.get("cursor") or None,
                with_siblings=with_siblings,
            )
        )
        if expand:
            keep = {*expand, "id", "_id"}
            items = [{k: v for k, v in item.items() if k in keep} for item in items]
        elif not (full or filters or params.get("cardData")):
            for item in items:
                item.pop("cardData", None)
        headers = {}
        if next_cursor:
            query = [(k, v) for k, v in params.multi_items() if k != "cursor"]
            query.append(("cursor", next_cursor))
            headers["Link"] = (
                f'<{self.base_url(request)}/api/models?{urlencode(query)}>; rel="next"'
            )
        return JSONResponse(items, headers=headers)

    async def model_info(self, request: Request, repo_id: str, revision: str) -> Response:
        """``GET /api/models/{id}[/revision/{rev}]``."""
        ident = await self.identity(request)
        info = await run_in_threadpool(
            self.service.model_info, ident, repo_id, revision, self.base_url(request)
        )
        expand = request.query_params.getlist("expand")
        if expand:
            keep = {*expand, "id", "_id"}
            info = {k: v for k, v in info.items() if k in keep}
        return JSONResponse(info)

    async def tree(self, request: Request, repo_id: str, revision: str, path: str) -> Response:
        """``GET /api/models/{id}/tree/{rev}[/{path}]``."""
        recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
        ident = await self.identity(request)
        items = await run_in_threadpool(
            self.service.tree, ident, repo_id, revision, path or None, recursive
        )
        return JSONResponse(items)

    async def refs(self, request: Request, repo_id: str) -> Response:
        """``GET /api/models/{id}/refs``."""
        ident = await self.identity(request)
        return JSONResponse(await run_in_threadpool(self.service.refs, ident, repo_id))

    async def commits(self, request: Request, repo_id: str, revision: str) -> Response:
        """``GET /api/models/{id}/commits/{rev}``."""
        ident = await self.identity(request)
        return JSONResponse(await run_in_threadpool(self.service.commits, ident, repo_id, revision))

    async def paths_info(self, request: Request, repo_id: str, revision: str) -> Response:
        """``POST /api/models/{id}/paths-info/{rev}`` (form: ``paths=...`` repeated)."""
        body = await _read_body(request, MAX_JSON_BODY)
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=False, strict_parsing=False)
        except UnicodeDecodeError:
            raise bad_request("paths-info: form body is not UTF-8") from None
        paths = form.get("paths", [])
        if not paths:
            raise bad_request("paths-info: give at least one 'paths' form field")
        ident = await self.identity(request)
        return JSONResponse(
            await run_in_threadpool(self.service.paths_info, ident, repo_id, revision, paths)
        )

    async def resolve(self, request: Request, repo_id: str, revision: str, path: str) -> Response:
        """``HEAD``/``GET /{id}/resolve/{rev}/{path}`` with single byte ranges."""
        ident = await self.identity(request)
        resolved = await run_in_threadpool(
            self.service.resolve_file, ident, repo_id, revision, path
        )
        tree_file = resolved.file
        total = tree_file.size
        headers = {
            "X-Repo-Commit": resolved.commit_sha,
            "ETag": f'"{tree_file.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{_header_safe(path.rsplit("/", 1)[-1])}"',
            "Cache-Control": "public, max-age=31536000, immutable"
            if revision == resolved.commit_sha
            else "no-cache",
        }
        if tree_file.is_lfs:
            headers["X-Linked-Etag"] = f'"{tree_file.sha256}"'
            headers["X-Linked-Size"] = str(total)
        if not resolved.blob_path.exists():
            log.error("blob %s of %s missing from the store", tree_file.sha256, repo_id)
            raise HubHTTPError(500, "stored file is missing")
        byte_range = None
        range_header = request.headers.get("range")
        if range_header:
            try:
                byte_range = parse_range(range_header, total)
            except HubHTTPError as exc:
                exc.headers.update({k: v for k, v in headers.items() if k.startswith("X-")})
                raise
        start, end = byte_range if byte_range else (0, total - 1)
        length = max(end - start + 1, 0)
        headers["Content-Length"] = str(length)
        status = 200
        if byte_range:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        if request.method == "HEAD":
            return Response(
                status_code=status, headers=headers, media_type="application/octet-stream"
            )
        if length <= SMALL_FILE:  # metadata reads and small files: one read, no thread hops
            with resolved.blob_path.open("rb") as fh:
                fh.seek(start)
                content = fh.read(length)
            return Response(
                content, status_code=status, headers=headers, media_type="application/octet-stream"
            )
        return StreamingResponse(
            _file_chunks(resolved.blob_path, start, length),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    # ----------------------------------------------------------- writes

    async def create_repo(self, request: Request) -> Response:
        """``POST /api/repos/create``."""
        body = await _json_body(request)
        repo_type = body.get("type") or "model"
        if repo_type != "model":
            raise bad_request(f"only model repos are served here, not {repo_type!r}")
        name, organization = body.get("name"), body.get("organization")
        if organization is not None and not isinstance(organization, str):
            raise bad_request("organization must be a string")
        if not isinstance(name, str):
            raise bad_request("'name' must be a string")
        if "/" in name and organization is None:
            organization, name = name.split("/", 1)
        visibility = body.get("visibility")
        private = bool(body.get("private")) or visibility == "private"
        ident = await self.identity(request)
        result = await run_in_threadpool(
            self.service.create_repo, ident, organization, name, private, self.base_url(request)
        )
        return JSONResponse(result)

    async def delete_repo(self, request: Request) -> Response:
        """``DELETE /api/repos/delete``."""
        body = await _json_body(request)
        if (body.get("type") or "model") != "model":
            raise bad_request("only model repos are served here")
        name, organization = body.get("name"), body.get("organization")
        if organization is not None and not isinstance(organization, str):
            raise bad_request("organization must be a string")
        if not isinstance(name, str):
            raise bad_request("'name' must be a string")
        if "/" in name and organization is None:
            organization, name = name.split("/", 1)
        ident = await self.identity(request)
        await run_in_threadpool(self.service.delete_repo, ident, organization, name)
        return JSONResponse({})

    async def validate_yaml(self, request: Request) -> Response:
        """``POST /api/validate-yaml``: always JSON (the client reads it before the status)."""
        try:
            body = await _json_body(request)
        except HubHTTPError as exc:
            return JSONResponse(
                {"errors": [{"message": exc.message}], "warnings": []}, status_code=400
            )
        content = body.get("content")
        if not isinstance(content, str):
            return JSONResponse(
                {"errors": [{"message": "'content' must be a string"}], "warnings": []},
                status_code=400,
            )
        try:
            parse_front_matter(content)
        except ValueError as exc:
            return JSONResponse(
                {"errors": [{"message": str(exc)}], "warnings": []}, status_code=400
            )
        return JSONResponse({"errors": [], "warnings": []})

    async def preupload(self, request: Request, repo_id: str, revision: str) -> Response:
        """``POST /api/models/{id}/preupload/{rev}``."""
        if request.query_params.get("create_pr") in ("1", "true"):
            raise bad_request("pull requests are not supported by this server")
        body = await _json_body(request)
        files = body.get("files")
        if not isinstance(files, list):
            raise bad_request("preupload: 'files' must be a list")
        ident = await self.identity(request)
        return JSONResponse(
            await run_in_threadpool(self.service.preupload, ident, repo_id, revision, files)
        )

    async def lfs_batch(self, request: Request, repo_id: str) -> Response:
        """``POST /{id}.git/info/lfs/objects/batch``."""
        body = await _json_body(request)
        ident = await self.identity(request)
        result = await run_in_threadpool(
            self.service.lfs_batch, ident, repo_id, body, self.base_url(request)
        )
        return JSONResponse(result, media_type="application/vnd.git-lfs+json")

    async def lfs_upload(self, request: Request, oid: str) -> Response:
        """``PUT`` of a signed upload URL: stream to a temp file, verify sha256 + size, store."""
        q = request.query_params
        size = self.service.check_upload_signature(
            oid, q.get("size", ""), q.get("exp", ""), q.get("sig", "")
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise bad_request(f"Content-Length {declared} differs from the announced size {size}")
        if self.service.blobs.size_of(oid) == size:
            async for _ in request.stream():  # already stored: drain and accept
                pass
            return Response(status_code=200)
        writer = await run_in_threadpool(self.service.blobs.writer, size)
        try:
            async for chunk in request.stream():
                if chunk:
                    writer.write(chunk)
            await run_in_threadpool(writer.commit, oid, size)
        except BlobTooLarge:
            writer.abort()
            raise bad_request(f"more bytes than the announced size {size}") from None
        except BlobMismatch as exc:
            raise bad_request(f"upload rejected: {exc}") from None
        except BaseException:
            writer.abort()
            raise
        return Response(status_code=200)

    async def lfs_verify(self, request: Request, oid: str) -> Response:
        """``POST`` verify: 200 when the object is stored with the announced size."""
        body = await _json_body(request)
        await self.identity(request)
        size = body.get("size")
        if not is_sha256(oid):
            raise bad_request(f"LFS verify: {oid!r} is not a sha256 oid")
        stored = self.service.blobs.size_of(oid)
        if stored is None or (isinstance(size, int) and size != stored):
            raise HubHTTPError(404, f"object {oid} is not stored")
        return JSONResponse({"oid": oid, "size": stored})

    async def commit(self, request: Request, repo_id: str, revision: str) -> Response:
        """``POST /api/models/{id}/commit/{rev}`` (NDJSON)."""
        if request.query_params.get("create_pr") in ("1", "true"):
            raise bad_request("pull requests are not supported by this server")
        ident = await self.identity(request)
        if ident is None:
            raise HubHTTPError(401, "a token is required to commit")
        # base64 inflates by 4/3; allow a little room for the JSON around it
        limit = self.config.max_upload_size * 4 // 3 + MAX_JSON_BODY
        body = await _read_body(request, limit)
        header, ops = parse_commit_body(body, self.config.max_upload_size)
        result = await run_in_threadpool(
            self.service.commit, ident, repo_id, revision, header, ops, self.base_url(request)
        )
        return JSONResponse(result)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid Content-Length")
        if int(declared) > limit:
            raise HubHTTPError(413, f"request body larger than {limit} bytes")
    parts: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HubHTTPError(413, f"request body larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _read_body(request, MAX_JSON_BODY)
    try:
        data = parse_json(body)
    except MalformedDocument as exc:
        raise bad_request(f"request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    reject_nul(data)
    return data


def _file_chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = length
        while remaining > 0:
            chunk = fh.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(config: ServerConfig) -> HubApp:
    """Build the app for ``config`` (the database schema must already be up to date)."""
    from registry.db import make_engine
    from registry.server.indexing import make_registry_indexer

    engine = make_engine(config.db_url)
    blobs = BlobStore(config.blobs_dir)
    secret = load_or_create_secret(config.data_dir)
    service = HubService(engine, blobs, config, secret, make_registry_indexer(engine, config))
    return HubApp(service)


def config_to_env(config: ServerConfig) -> str:
    """Serialise a config for the worker processes (uvicorn imports the app by name)."""
    data = asdict(config)
    data["data_dir"] = str(config.data_dir)
    return json.dumps(data)


def app_from_env() -> HubApp:
    """uvicorn factory: each worker builds its app from ``$LORADEX_SERVE_CONFIG``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = json.loads(os.environ[CONFIG_ENV])
    data["data_dir"] = Path(data["data_dir"])
    return create_app(ServerConfig(**data))
