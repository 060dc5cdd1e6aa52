"""``PUT /api/models/{id}/settings``: a repo's settings, as ``HfApi.update_repo_settings`` sends
them (this server changes ``gated``; see ``RepoAdmin.update_settings``)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from registry.server.http_io import Endpoints, json_body


async def put_repo_settings(endpoints: Endpoints, request: Request, repo_id: str) -> Response:
    """Change the settings of ``repo_id`` (401 without a token, 403 for another namespace)."""
    ident = await endpoints.identity(request)
    settings = await json_body(request)
    answer = await run_in_threadpool(
        endpoints.service.update_repo_settings, ident, repo_id, settings
    )
    return JSONResponse(answer)
