"""The HTTP plumbing every endpoint shares: who is asking, request bodies, error answers.

Every failure leaves as a JSON error with ``X-Error-Code``/``X-Error-Message``, which the
client maps to its exception classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Send

from loradex.documents import MalformedDocument, parse_json
from registry.server.errors import HubHTTPError, bad_request
from registry.server.service import HubService
from registry.server.types import Identity
from registry.server.validation import reject_nul

MAX_JSON_BODY = 8 * 1024 * 1024
CHUNK = 256 * 1024
# A refused request's body is read and dropped, up to this many bytes, before the answer: a
# client (httpx, huggingface_hub) sends its whole body before it reads the answer, so closing
# on it unread gives it a broken pipe or a reset, which it retries, instead of a 4xx it reads.
# Past this, the answer goes out with ``Connection: close`` and the connection is dropped.
DRAIN_LIMIT = 64 * 1024 * 1024


class Endpoints:
    """What every group of endpoints needs: the service, the base URL, the caller's identity."""

    def __init__(self, service: HubService) -> None:
        self.service = service
        self.config = service.config

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


def error_response(exc: HubHTTPError, head: bool = False) -> Response:
    """A JSON error with the headers the client maps exceptions from."""
    headers = {"X-Error-Message": header_safe(exc.message), **exc.headers}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    if head:
        return Response(status_code=exc.status, headers=headers, media_type="application/json")
    return JSONResponse(
        {"error": exc.message, **exc.extra}, status_code=exc.status, headers=headers
    )


def header_safe(text: str) -> str:
    """``text`` as a header value: printable ASCII, at most 1,000 characters."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:1000]


async def drain_body(request: Request, limit: int = DRAIN_LIMIT) -> bool:
    """Read and drop the rest of the request body, at most ``limit`` more bytes; True when the
    whole body was read (the connection can then carry the answer and live on)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return False  # not worth reading: answer at once and close
    dropped = 0
    async for chunk in request.stream():
        dropped += len(chunk)
        if dropped > limit:
            return False
    return True


async def refuse(request: Request, error: HubHTTPError, limit: int = DRAIN_LIMIT) -> HubHTTPError:
    """``error``, once the rest of the body is drained (see ``DRAIN_LIMIT``); raise it.

    A body too large to drain gets ``Connection: close`` on the answer."""
    if not await drain_body(request, limit):
        error.headers["Connection"] = "close"
    return error


async def drain_refused(request: Request, error: HubHTTPError) -> None:
    """Before an error answer, read and drop what is left of the request's body (up to
    ``DRAIN_LIMIT``), whichever step refused it: a 401, or a 503 because the database is
    down, may come before the body was read. An answer already marked ``Connection: close``
    has been drained as far as it will be."""
    if error.headers.get("Connection") == "close":
        return
    try:
        complete = await drain_body(request)
    except RuntimeError:  # Starlette: the body was already read to its end
        return
    if not complete:
        error.headers["Connection"] = "close"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes (the rest of
    the body is drained first, up to ``DRAIN_LIMIT``, so the client reads the 413)."""
    too_large = HubHTTPError(413, f"request body larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid Content-Length")
        if int(declared) > limit:
            raise await refuse(request, too_large)
    parts: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise await refuse(request, too_large)
        parts.append(chunk)
    return b"".join(parts)


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise, or when a string holds NUL)."""
    body = await read_body(request, MAX_JSON_BODY)
    try:
        data = parse_json(body)
    except MalformedDocument as exc:
        raise bad_request(f"request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    reject_nul(data)
    return data


def file_chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``path`` from ``start``, in chunks, for a streaming response."""
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = length
        while remaining > 0:
            chunk = fh.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


async def lifespan(
    receive: Receive,
    send: Send,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Answer the ASGI lifespan messages, starting and stopping the process's background
    work (the re-indexing loop) with it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_start is not None:
                on_start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_stop is not None:
                await run_in_threadpool(on_stop)
            await send({"type": "lifespan.shutdown.complete"})
            return
