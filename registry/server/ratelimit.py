"""``loradex serve --rate-limit N/SECONDS``: refuse a client over its quota as huggingface.co does.

The Hub counts requests in fixed windows (here: starting at multiples of SECONDS since the
epoch, so every worker's windows line up), per client (token, or address when anonymous) and
per kind: ``api`` (``/api/...``), ``resolvers`` (file downloads) and ``pages`` (the rest).
Every answer carries the IETF draft headers the Hub sends and huggingface_hub parses
(``huggingface_hub.utils.parse_ratelimit_headers``)::

    RateLimit: "api";r=<requests left>;t=<seconds until the window resets>
    RateLimit-Policy: "fixed window";"api";q=<quota>;w=<window seconds>

and a request over the quota gets 429 with ``Retry-After: <t>`` besides. LFS uploads to their
signed URL are not counted: on the Hub those bytes go to a storage bucket, outside the API.
Counts live in the process, so with ``--workers N`` a client may get up to N times the quota.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loradex.errors import ConfigError
from registry.server.errors import HubHTTPError
from registry.server.http_io import error_response
from registry.server.types import ServerConfig

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_WINDOW = 24 * 3600
# A refused request's body is read (and dropped) up to this size, so the client gets the 429
# instead of a reset connection; a larger body is left unread and the connection closed.
MAX_DRAIN = 1024 * 1024
_FORGET_AFTER = 10_000  # clients remembered before the counts of past windows are dropped


def parse_rate_limit(text: str) -> tuple[int, int]:
    """``"500/300"`` -> (500 requests, per 300 s); ConfigError otherwise."""
    match = _RATE_RE.match(text)
    if not match or int(match.group(1)) < 1 or not 1 <= int(match.group(2)) <= MAX_WINDOW:
        raise ConfigError(
            f"invalid --rate-limit {text!r}: use N/SECONDS, e.g. 500/300 (N >= 1, "
            f"1 <= SECONDS <= {MAX_WINDOW})"
        )
    return int(match.group(1)), int(match.group(2))


def with_rate_limit(app: ASGIApp, config: ServerConfig) -> ASGIApp:
    """``app`` behind a :class:`RateLimiter` when ``config.rate_limit`` is set, else as is."""
    if not config.rate_limit:
        return app
    return RateLimiter(app, config.rate_limit, config.rate_limit_window)


def app_from_env() -> ASGIApp:
    """uvicorn factory of each worker: ``registry.server.app.app_from_env``, rate-limited."""
    from registry.server.app import app_from_env as hub_app_from_env

    app = hub_app_from_env()
    return with_rate_limit(app, app.config)


def request_kind(path: str) -> str:
    """The Hub's quota a request counts against: ``api``, ``resolvers`` or ``pages``."""
    parts = path.split("/")
    if len(parts) > 1 and parts[1] == "api":
        return "api"
    if len(parts) > 3 and parts[3] == "resolve":
        return "resolvers"
    return "pages"


class RateLimiter:
    """ASGI middleware counting each client's requests per kind in fixed windows."""

    def __init__(
        self, app: ASGIApp, quota: int, window: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.quota = quota
        self.window = window
        self.clock = clock
        self.counts: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (window index, used)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _exempt(scope):
            await self.app(scope, receive, send)
            return
        kind = request_kind(scope["path"])
        key = (kind, _client(scope))
        now = self.clock()
        index = int(now // self.window)
        reset = max(1, math.ceil((index + 1) * self.window - now))
        counted_index, used = self.counts.get(key, (index, 0))
        if counted_index != index:
            used = 0
        if used >= self.quota:
            await _drain(receive)
            refusal = HubHTTPError(
                429,
                f"rate limit: {self.quota} {kind} requests per {self.window} s for this client; "
                f"retry in {reset} s",
                headers={"Retry-After": str(reset), **self._headers(kind, 0, reset)},
            )
            await error_response(refusal, scope["method"] == "HEAD")(scope, receive, send)
            return
        self.counts[key] = (index, used + 1)
        if len(self.counts) > _FORGET_AFTER:
            self.counts = {k: v for k, v in self.counts.items() if v[0] == index}
        extra = [
            (name.lower().encode(), value.encode())
            for name, value in self._headers(kind, self.quota - used - 1, reset).items()
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _headers(self, kind: str, remaining: int, reset: int) -> dict[str, str]:
        return {
            "RateLimit": f'"{kind}";r={remaining};t={reset}',
            "RateLimit-Policy": f'"fixed window";"{kind}";q={self.quota};w={self.window}',
        }


def _exempt(scope: Scope) -> bool:
    return bool(scope["method"] == "PUT" and scope["path"].startswith("/api/lfs-upload/"))


def _client(scope: Scope) -> str:
    """Who is counted: the token when one is sent (never stored as such), else the address."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return "token:" + hashlib.sha256(value).hexdigest()[:32]
    client = scope.get("client")
    return f"address:{client[0] if client else '?'}"


async def _drain(receive: Receive) -> None:
    """Read a refused request's body (up to ``MAX_DRAIN`` bytes) so the answer reaches it."""
    received = 0
    while received <= MAX_DRAIN:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
