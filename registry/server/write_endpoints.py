"""The write endpoints: repos, YAML validation, preupload, LFS batch/upload/verify, commits."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from loradex.errors import StorageError
from registry.cards import parse_front_matter
from registry.server.blobstore import BlobMismatch, BlobTooLarge, is_sha256
from registry.server.commit_request import parse_commit_body
from registry.server.errors import HubHTTPError, bad_request
from registry.server.http_io import (
    DRAIN_LIMIT,
    MAX_JSON_BODY,
    Endpoints,
    drain_body,
    json_body,
    read_body,
    refuse,
)

# An upload URL with a bad or expired signature: its body is drained up to this, no more.
UNSIGNED_DRAIN_LIMIT = 1024 * 1024


class WriteEndpoints(Endpoints):
    """What a client sends: repo creation and deletion, uploads and commits."""

    async def create_repo(self, request: Request) -> Response:
        """``POST /api/repos/create``."""
        body = await json_body(request)
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
        body = await json_body(request)
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
            body = await json_body(request)
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
        body = await json_body(request)
        files = body.get("files")
        if not isinstance(files, list):
            raise bad_request("preupload: 'files' must be a list")
        ident = await self.identity(request)
        return JSONResponse(
            await run_in_threadpool(self.service.preupload, ident, repo_id, revision, files)
        )

    async def lfs_batch(self, request: Request, repo_id: str) -> Response:
        """``POST /{id}.git/info/lfs/objects/batch``."""
        body = await json_body(request)
        ident = await self.identity(request)
        result = await run_in_threadpool(
            self.service.lfs_batch, ident, repo_id, body, self.base_url(request)
        )
        return JSONResponse(result, media_type="application/vnd.git-lfs+json")

    async def lfs_upload(self, request: Request, oid: str) -> Response:
        """``PUT`` of a signed upload URL: stream to a temp file, verify sha256 + size, store.

        Every refusal (bad signature, a body longer or shorter than the signed size, a sha256
        that differs, no space left) drains the body first, within a bound, so the client
        reads the 4xx/507 instead of a broken pipe; the temporary file is always dropped.
        """
        q = request.query_params
        try:
            size = self.service.check_upload_signature(
                oid, q.get("size", ""), q.get("exp", ""), q.get("sig", "")
            )
        except HubHTTPError as exc:  # nobody vouched for this body: drain little of it
            raise await refuse(request, exc, UNSIGNED_DRAIN_LIMIT) from None
        drain_limit = size + DRAIN_LIMIT  # the signature allowed `size` bytes, and a margin
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise await refuse(
                request,
                bad_request(f"Content-Length {declared} differs from the announced size {size}"),
                drain_limit,
            )
        if self.service.blobs.size_of(oid) == size:  # already stored: drain and accept
            if not await drain_body(request, drain_limit):
                raise bad_request(f"more bytes than the announced size {size}")
            return Response(status_code=200)
        try:
            writer = await run_in_threadpool(self.service.blobs.writer, size)
        except StorageError:
            await drain_body(request, drain_limit)
            raise
        try:
            async for chunk in request.stream():
                if chunk:
                    writer.write(chunk)
            await run_in_threadpool(writer.commit, oid, size)
        except ClientDisconnect:
            writer.abort()
            raise
        except BlobTooLarge:
            writer.abort()
            raise await refuse(
                request, bad_request(f"more bytes than the announced size {size}"), drain_limit
            ) from None
        except BlobMismatch as exc:  # the whole body was read: nothing to drain
            raise bad_request(f"upload rejected: {exc}") from None
        except Exception:  # no space left (507), an I/O error (500): drain, then answer
            writer.abort()
            await drain_body(request, drain_limit)
            raise
        except BaseException:
            writer.abort()
            raise
        return Response(status_code=200)

    async def lfs_verify(self, request: Request, oid: str) -> Response:
        """``POST`` verify: 200 when the object is stored with the announced size."""
        body = await json_body(request)
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
        body = await read_body(request, limit)
        header, ops = parse_commit_body(body, self.config.max_upload_size)
        result = await run_in_threadpool(
            self.service.commit, ident, repo_id, revision, header, ops, self.base_url(request)
        )
        return JSONResponse(result)
