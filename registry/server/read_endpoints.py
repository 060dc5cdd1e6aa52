"""The read endpoints: listings, model info, trees, refs, history, paths-info and downloads."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from registry.server.errors import HubHTTPError, bad_request
from registry.server.http_io import MAX_JSON_BODY, Endpoints, file_chunks, header_safe, read_body
from registry.server.validation import parse_range

log = logging.getLogger("loradex.server")

SMALL_FILE = 1024 * 1024


class ReadEndpoints(Endpoints):
    """``GET``/``HEAD`` of what a client reads (and ``paths-info``, a read sent as a POST)."""

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
        body = await read_body(request, MAX_JSON_BODY)
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
            "Content-Disposition": f'inline; filename="{header_safe(path.rsplit("/", 1)[-1])}"',
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
            file_chunks(resolved.blob_path, start, length),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )
