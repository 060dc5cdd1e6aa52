"""The ASGI app of the built-in Hub: routing and error mapping, and how a server process starts.

Routing is done on the *raw* path, split on ``/`` and then unquoted segment by segment: the
client percent-encodes revisions as one segment (``refs%2Fpr%2F1``), which a decoded path would
split in two. Every failure leaves as a JSON error with ``X-Error-Code``/``X-Error-Message``;
a malformed request is a 4xx, and only a bug in this server can produce a 500. The endpoints
are in ``read_endpoints`` and ``write_endpoints``, their shared plumbing in ``http_io``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from loradex.errors import LoradexError
from loradex.files import storage_error
from registry.server.blobstore import BlobStore
from registry.server.errors import HubHTTPError, bad_request, http_error_for
from registry.server.http_io import Endpoints, drain_refused, error_response, lifespan
from registry.server.indexing import RetryLoop
from registry.server.read_endpoints import ReadEndpoints
from registry.server.repos import DEFAULT_BRANCH
from registry.server.service import HubService
from registry.server.settings_endpoint import put_repo_settings
from registry.server.types import ServerConfig
from registry.server.validation import url_repo_id
from registry.server.web.pages import WebPages
from registry.server.write_endpoints import WriteEndpoints

log = logging.getLogger("loradex.server")

MAX_HEADER_BYTES = 32 * 1024
CONFIG_ENV = "LORADEX_SERVE_CONFIG"


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


class HubApp(Endpoints):
    """ASGI callable serving the Hub API for one :class:`HubService`."""

    def __init__(self, service: HubService) -> None:
        super().__init__(service)
        self.reads = ReadEndpoints(service)
        self.writes = WriteEndpoints(service)
        self.web = WebPages(service, load_or_create_secret(service.config.data_dir))
        self.retry_loop: RetryLoop | None = None  # re-indexing in the background (create_app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            loop = self.retry_loop
            if loop is None:
                await lifespan(receive, send)
            else:
                await lifespan(receive, send, loop.start, loop.stop)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        head = request.method == "HEAD"
        error: HubHTTPError | None = None
        try:
            response = await self.dispatch(request)
        except ClientDisconnect:
            return
        except HubHTTPError as exc:
            error = exc
        except (LoradexError, OSError) as exc:
            error = self.fault_answer(request, exc)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            error = HubHTTPError(500, "internal server error")
        if error is not None:
            try:  # the client reads the answer only once it has sent its body
                await drain_refused(request, error)
            except ClientDisconnect:
                return
            response = error_response(error, head)
        await response(scope, receive, send)

    @staticmethod
    def fault_answer(request: Request, exc: LoradexError | OSError) -> HubHTTPError:
        """The answer for a typed error (``registry.server.errors.http_error_for``): a fault
        that passes (database down or locked: 503 + Retry-After; disk full: 507) is logged in
        one line; one that needs the operator (a storage or database error with no better
        name) is logged with its traceback and answered 500."""
        # Not isinstance(exc, OSError): DatabaseUnavailable is a ConnectionError, an OSError.
        error = exc if isinstance(exc, LoradexError) else storage_error(exc)
        answer = http_error_for(error)
        if answer is None:
            log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
            return HubHTTPError(500, "internal server error")
        if answer.status >= 500:
            log.warning("%d on %s %s: %s", answer.status, request.method, request.url.path, error)
        return answer

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
                    return await self.reads.list_models(request)
                if n >= 4:
                    repo_id = self.repo_id(seg[2], seg[3])
                    rest = seg[4:]
                    if not rest and method == "GET":
                        return await self.reads.model_info(request, repo_id, DEFAULT_BRANCH)
                    if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                        return await self.reads.model_info(request, repo_id, rest[1])
                    if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                        return await self.reads.tree(request, repo_id, rest[1], "/".join(rest[2:]))
                    if rest == ["refs"] and method == "GET":
                        return await self.reads.refs(request, repo_id)
                    if rest == ["settings"] and method == "PUT":
                        return await put_repo_settings(self, request, repo_id)
                    if len(rest) == 2 and rest[0] == "commits" and method == "GET":
                        return await self.reads.commits(request, repo_id, rest[1])
                    if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                        return await self.reads.paths_info(request, repo_id, rest[1])
                    if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                        return await self.writes.preupload(request, repo_id, rest[1])
                    if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                        return await self.writes.commit(request, repo_id, rest[1])
            if seg[1:] == ["whoami-v2"] and method == "GET":
                ident = await self.identity(request)
                return JSONResponse(self.service.whoami(ident))
            if seg[1:] == ["repos", "create"] and method == "POST":
                return await self.writes.create_repo(request)
            if seg[1:] == ["repos", "delete"] and method == "DELETE":
                return await self.writes.delete_repo(request)
            if seg[1:] == ["validate-yaml"] and method == "POST":
                return await self.writes.validate_yaml(request)
            if n == 3 and seg[1] == "lfs-upload" and method == "PUT":
                return await self.writes.lfs_upload(request, seg[2])
            if n == 3 and seg[1] == "lfs-verify" and method == "POST":
                return await self.writes.lfs_verify(request, seg[2])
            raise HubHTTPError(404, f"no such endpoint: {method} {raw_text}")
        if n >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = self.repo_id(seg[0], seg[1])
            # A download link on a page of a private repo, from a signed-in browser.
            request = await self.web.with_cookie_authorization(request)
            return await self.reads.resolve(request, repo_id, seg[3], "/".join(seg[4:]))
        if (
            n == 6
            and seg[1].endswith(".git")
            and seg[2:] == ["info", "lfs", "objects", "batch"]
            and method == "POST"
        ):
            repo_id = self.repo_id(seg[0], seg[1][: -len(".git")])
            return await self.writes.lfs_batch(request, repo_id)
        page = await self.web.dispatch(request, seg)  # the web pages (registry.server.web)
        if page is not None:
            return page
        raise HubHTTPError(404, f"no such endpoint: {method} {raw_text}")

    @staticmethod
    def repo_id(namespace: str, name: str) -> str:
        """Validate the two halves of a repo id taken from a URL."""
        repo_id = url_repo_id(namespace, name)
        if repo_id is None:
            raise HubHTTPError(
                404,
                f"Repository Not Found for url: {namespace}/{name} (invalid repo id).",
                "RepoNotFound",
            )
        return repo_id


def create_app(config: ServerConfig) -> HubApp:
    """Build the app for ``config`` (the database schema must already be up to date)."""
    from registry.db import make_engine
    from registry.server.indexing import make_registry_indexer

    engine = make_engine(config.db_url)
    blobs = BlobStore(config.blobs_dir)
    secret = load_or_create_secret(config.data_dir)
    indexer = make_registry_indexer(engine, config)
    app = HubApp(HubService(engine, blobs, config, secret, indexer))
    app.retry_loop = RetryLoop(indexer)
    return app


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
