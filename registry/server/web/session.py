"""Signing in to the web pages: the token cookie and CSRF protection of the two forms.

The token a user pastes into the sign-in form is kept in a cookie that scripts cannot read
(``HttpOnly``) and that no other site's page can make the browser send (``SameSite=Strict``);
it is checked like an ``Authorization`` header on every page, and it is never written into a
page, a URL or a log line. Signing in and out are ``POST`` forms protected twice: a CSRF token
(an HMAC of a random per-browser cookie under the server's secret, the double-submit
pattern) and, when the browser sends one, an ``Origin`` that must be this server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

TOKEN_COOKIE = "ldx_token"
CSRF_COOKIE = "ldx_csrf"
CSRF_FIELD = "csrf_token"
# A pasted token longer than this is no token of ours; refuse it before hashing.
MAX_TOKEN_LENGTH = 512
SESSION_SECONDS = 7 * 24 * 3600


class WebSession:
    """Cookies and CSRF tokens under one server secret."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own, so a CSRF token can never double as an upload signature.
        self.key = hmac.new(secret, b"loradex web csrf", hashlib.sha256).digest()

    @staticmethod
    def token(request: Request) -> str | None:
        """The token the browser signed in with, if any."""
        value = request.cookies.get(TOKEN_COOKIE)
        if not value or len(value) > MAX_TOKEN_LENGTH or not value.isascii():
            return None
        return value

    def csrf_seed(self, request: Request) -> tuple[str, bool]:
        """The browser's CSRF cookie value, and whether it is new (then it must be set)."""
        seed = request.cookies.get(CSRF_COOKIE, "")
        if len(seed) == 43 and seed.replace("-", "").replace("_", "").isalnum():
            return seed, False
        return secrets.token_urlsafe(32), True

    def csrf_token(self, seed: str) -> str:
        """The form field that proves a form came from one of our pages in this browser."""
        return hmac.new(self.key, seed.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, field: str | None) -> bool:
        """Whether a posted form carries the right CSRF token and, if sent, our origin."""
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            return False
        seed = request.cookies.get(CSRF_COOKIE)
        if not seed or not field:
            return False
        return hmac.compare_digest(self.csrf_token(seed), field)

    @staticmethod
    def set_csrf_cookie(response: Response, request: Request, seed: str) -> None:
        """Give the browser its CSRF seed (only our own pages can read it back)."""
        response.set_cookie(CSRF_COOKIE, seed, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")

    @staticmethod
    def sign_in(response: Response, request: Request, token: str) -> None:
        """Keep ``token`` in the browser."""
        response.set_cookie(TOKEN_COOKIE, token, max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")

    @staticmethod
    def sign_out(response: Response, request: Request) -> None:
        """Forget the token."""
        response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"
