"""The web pages of ``loradex serve``: routes, query parameters, and the answer headers.

Routes (``GET``, plus the two sign-in forms' ``POST``), tried after every API route:

- ``/``, ``/models``: search (``q``, ``base_model``, ``rank``, ``task``, ``tag``, ``author``,
  ``kind``, ``license``, ``sort``, ``page``, ``per_page``; the URL is the whole query);
- ``/{namespace}``: an author's repos; ``/base-models/{base model}``: a base model's modules;
- ``/{namespace}/{name}``: a module; ``.../tree/{revision}``: the same at one revision;
  ``.../commits``: its history;
- ``/sign-in`` (form and ``POST``), ``/sign-out`` (``POST``), ``/static/{file}``.

Every page is rendered on the server and works without JavaScript; every answer carries a
strict Content-Security-Policy (no inline script or style, nothing from elsewhere). A bad
query parameter is a 400 page naming it, a missing or hidden repo a 404 page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from registry.entities import SearchQuery
from registry.server.errors import HubHTTPError
from registry.server.http_io import Endpoints, read_body
from registry.server.repos import DEFAULT_BRANCH
from registry.server.service import HubService
from registry.server.types import Identity
from registry.server.validation import check_name, url_repo_id
from registry.server.web import render
from registry.server.web.queries import HISTORY_ON_PAGE, PageTooDeep, WebQueries
from registry.server.web.session import CSRF_FIELD, MAX_TOKEN_LENGTH, WebSession

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# First path segments that are pages, not namespaces ("api" belongs to the API).
RESERVED = frozenset({"", "models", "sign-in", "sign-out", "static", "base-models", "api"})
SORTS = ("relevance", "downloads", "likes", "updated", "rank")
KINDS = ("lora", "hydra")
MAX_TEXT = 256
MAX_TAGS = 32
MAX_PAGE = 10_000
PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_FORM_BYTES = 8 * 1024


class BadParameter(ValueError):
    """A query parameter the page cannot use; the answer is a 400 page saying which."""


@dataclass(frozen=True)
class SearchForm:
    """The search page's query, as read from the URL (and written back into its links)."""

    q: str = ""
    base_model: str = ""
    rank: int | None = None
    task: str = ""
    tags: tuple[str, ...] = ()
    author: str = ""
    kind: str = ""
    license: str = ""
    sort: str = ""
    page: int = 1
    per_page: int = PER_PAGE

    def query(self) -> SearchQuery:
        """The registry query this form asks for."""
        return SearchQuery(
            text=self.q or None, base_model=self.base_model or None, rank=self.rank,
            task=self.task or None, tags=self.tags, author=self.author or None,
            kind=self.kind or None, license=self.license or None,
            sort=self.sort or None,  # type: ignore[arg-type]  # checked against SORTS
        )

    def params(self, **changes: Any) -> list[tuple[str, str]]:
        """The URL parameters of this form with ``changes`` (defaults left out)."""
        values = {**self.__dict__, **changes}
        out: list[tuple[str, str]] = []
        for key in ("q", "base_model", "rank", "task", "author", "kind", "license", "sort"):
            if values[key] not in ("", None):
                out.append((key, str(values[key])))
        out += [("tag", t) for t in values["tags"]]
        if values["per_page"] != PER_PAGE:
            out.append(("per_page", str(values["per_page"])))
        if values["page"] != 1:
            out.append(("page", str(values["page"])))
        return out

    def url(self, path: str = "/models", **changes: Any) -> str:
        """This query's URL (on ``path``) with ``changes``."""
        params = self.params(**changes)
        return f"{path}?{urlencode(params)}" if params else path


def read_search_form(request: Request) -> SearchForm:
    """The search parameters of a request (BadParameter names the first bad one)."""
    params = request.query_params

    def text(name: str) -> str:
        value = params.get(name, "").strip()
        if len(value) > MAX_TEXT:
            raise BadParameter(f"{name} is longer than {MAX_TEXT} characters")
        return value

    def integer(name: str, default: int | None, low: int, high: int) -> int | None:
        raw = params.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise BadParameter(f"{name} must be a whole number from {low} to {high}, "
                               f"not {raw[:40]!r}")
        return int(raw)

    tags = tuple(t.strip() for t in params.getlist("tag") if t.strip())
    if len(tags) > MAX_TAGS or any(len(t) > MAX_TEXT for t in tags):
        raise BadParameter(f"at most {MAX_TAGS} tags of at most {MAX_TEXT} characters")
    kind = text("kind").lower()
    if kind and kind not in KINDS:
        raise BadParameter(f"kind must be one of {', '.join(KINDS)}")
    sort = text("sort").lower()
    if sort and sort not in SORTS:
        raise BadParameter(f"sort must be one of {', '.join(SORTS)}")
    return SearchForm(
        q=text("q"), base_model=text("base_model"), rank=integer("rank", None, 1, 1_000_000),
        task=text("task"), tags=tags, author=text("author"), kind=kind, license=text("license"),
        sort=sort, page=integer("page", 1, 1, MAX_PAGE) or 1,
        per_page=integer("per_page", PER_PAGE, 1, MAX_PER_PAGE) or PER_PAGE,
    )


def repo_url(repo_id: str) -> str:
    """The module page of ``repo_id``."""
    return "/" + quote(repo_id)


def make_environment() -> Environment:
    """The Jinja2 environment: every value escaped unless marked safe (only sanitised cards)."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = render.human_size
    env.filters["count"] = render.human_count
    env.filters["repo_url"] = repo_url
    env.filters["quote"] = lambda value: quote(str(value), safe="")
    env.globals["resolve_url"] = render.resolve_url
    return env


class WebPages(Endpoints):
    """The pages over one :class:`HubService`."""

    def __init__(self, service: HubService, secret: bytes) -> None:
        super().__init__(service)
        self.queries = WebQueries(service.engine, service.blobs, service.config.source)
        self.session = WebSession(secret)
        self.env = make_environment()

    async def dispatch(self, request: Request, seg: list[str]) -> Response | None:
        """The page for these path segments, or None when the path is no page's."""
        method = request.method
        n = len(seg)
        if method == "POST" and n == 1 and seg[0] in ("sign-in", "sign-out"):
            return await (self.sign_in_post if seg[0] == "sign-in" else self.sign_out_post)(
                request)
        if method not in ("GET", "HEAD"):
            return None
        if n == 2 and seg[0] == "static":
            return self.static(seg[1])
        if n == 1 and seg[0] in ("", "models"):
            return await self.page(request, self._search)
        if n == 1 and seg[0] == "sign-in":
            return await self.page(request, self._sign_in_form)
        if n >= 2 and seg[0] == "base-models":
            base = "/".join(seg[1:])
            return await self.page(request, lambda r, i: self._base_model(r, i, base))
        if n == 1 and seg[0] not in RESERVED:
            return await self.page(request, lambda r, i: self._author(r, i, seg[0]))
        if 2 <= n <= 4 and seg[0] not in RESERVED:
            repo_id = f"{seg[0]}/{seg[1]}"
            rest = seg[2:]
            if not rest:
                return await self.page(request, lambda r, i: self._module(r, i, repo_id, None))
            if rest == ["commits"]:
                return await self.page(request, lambda r, i: self._commits(r, i, repo_id))
            if len(rest) == 2 and rest[0] == "tree" and rest[1]:
                revision = rest[1]
                return await self.page(
                    request, lambda r, i: self._module(r, i, repo_id, revision))
        return None

    # ------------------------------------------------------------------ plumbing

    async def with_cookie_authorization(self, request: Request) -> Request:
        """``request`` carrying the signed-in browser's token as its ``Authorization``, so a
        page's download link of a private file works; unchanged when a header is already
        there or the cookie holds no valid token (a public file must still download)."""
        token = self.session.token(request)
        if token is None or "authorization" in request.headers:
            return request
        identity, _ = await self.viewer(request)
        if identity is None:
            return request
        scope = dict(request.scope)
        scope["headers"] = [*request.scope["headers"],
                            (b"authorization", f"Bearer {token}".encode("ascii"))]
        return Request(scope, request.receive)

    async def page(
        self, request: Request, build: Callable[[Request, Identity | None], Response]
    ) -> Response:
        """Run one page's reads and rendering off the event loop; errors become pages."""
        identity, stale = await self.viewer(request)
        try:
            response = await run_in_threadpool(build, request, identity)
        except (BadParameter, PageTooDeep) as exc:
            response = self.error_page(request, identity, 400, "Bad request", str(exc))
        except HubHTTPError as exc:
            if exc.status >= 500:
                raise
            title = "Not found" if exc.status == 404 else "Bad request"
            response = self.error_page(request, identity, exc.status, title, exc.message)
        if stale:
            self.session.sign_out(response, request)
        return response

    async def viewer(self, request: Request) -> tuple[Identity | None, bool]:
        """Who is signed in (None when nobody), and whether a cookie holds a dead token."""
        token = self.session.token(request)
        if token is None:
            return None, False
        try:
            return await run_in_threadpool(self.service.authenticate, f"Bearer {token}"), False
        except HubHTTPError:
            return None, True

    def html(
        self, request: Request, identity: Identity | None, template: str, status: int = 200,
        **context: Any,
    ) -> Response:
        """Render ``template`` with the security headers and the CSRF seed of this browser."""
        seed, fresh = self.session.csrf_seed(request)
        body = self.env.get_template(template).render(
            viewer=identity.user if identity else None,
            csrf_field=CSRF_FIELD,
            csrf_token=self.session.csrf_token(seed),
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            **context,
        )
        response = HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
        if fresh:
            self.session.set_csrf_cookie(response, request, seed)
        return response

    def error_page(
        self, request: Request, identity: Identity | None, status: int, title: str, message: str
    ) -> Response:
        """A 4xx page with one line saying what is wrong."""
        return self.html(request, identity, "error.html", status, title=title, message=message)

    def static(self, name: str) -> Response:
        """A file of ``static/`` (CSS, the enhancement script, the icon)."""
        path = STATIC_DIR / name
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None or "/" in name or name.startswith(".") or not path.is_file():
            return Response("not found", status_code=404, media_type="text/plain",
                            headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
        return Response(path.read_bytes(), media_type=kind, headers=headers)

    # ------------------------------------------------------------------ search

    def _search(self, request: Request, identity: Identity | None) -> Response:
        form = read_search_form(request)
        hidden = self.queries.hidden_repo_ids(identity)
        found = self.queries.search(form.query(), hidden, page=form.page - 1,
                                    per_page=form.per_page)
        return self.html(
            request, identity, "search.html", form=form, found=found, sorts=SORTS, kinds=KINDS,
            first=(form.page - 1) * form.per_page + 1,
            prev_url=form.url(page=form.page - 1) if form.page > 1 else None,
            next_url=form.url(page=form.page + 1) if found.has_next else None,
        )

    def _base_model(self, request: Request, identity: Identity | None, base: str) -> Response:
        if len(base) > MAX_TEXT:
            raise BadParameter(f"base model longer than {MAX_TEXT} characters")
        form = read_search_form(request)
        form = SearchForm(**{**form.__dict__, "base_model": base})
        hidden = self.queries.hidden_repo_ids(identity)
        counts = self.queries.counts_by_kind(base, hidden)
        found = self.queries.search(form.query(), hidden, page=form.page - 1,
                                    per_page=form.per_page)
        path = "/base-models/" + quote(base)
        plain = SearchForm(**{**form.__dict__, "base_model": ""})
        return self.html(
            request, identity, "base_model.html", base=base, counts=counts, found=found,
            form=form, first=(form.page - 1) * form.per_page + 1,
            prev_url=plain.url(path, page=form.page - 1) if form.page > 1 else None,
            next_url=plain.url(path, page=form.page + 1) if found.has_next else None,
        )

    def _author(self, request: Request, identity: Identity | None, namespace: str) -> Response:
        check_name(namespace, "namespace")
        form = read_search_form(request)
        rows, more, modules = self.queries.author_repos(
            namespace, identity, page=form.page - 1, per_page=form.per_page)
        if not rows and form.page == 1:
            raise HubHTTPError(404, f"no repos of {namespace} to show")
        path = "/" + quote(namespace)
        return self.html(
            request, identity, "author.html", namespace=namespace, rows=rows, modules=modules,
            page=form.page,
            prev_url=f"{path}?page={form.page - 1}" if form.page > 1 else None,
            next_url=f"{path}?page={form.page + 1}" if more else None,
        )

    # ------------------------------------------------------------------ one module

    def _module(
        self, request: Request, identity: Identity | None, repo_id: str, revision: str | None
    ) -> Response:
        namespace, name = repo_id.split("/", 1)
        repo_id = self.repo_id(namespace, name)
        view = self.queries.repo_view(identity, repo_id, revision or DEFAULT_BRANCH)
        shown_revision = view.commit.sha if revision else DEFAULT_BRANCH
        links = render.CardLinks(repo_id, shown_revision,
                                 frozenset(f.path for f in view.files))
        card_html = render.render_card(view.card_body, links) if view.card_body else ""
        hidden = self.queries.hidden_repo_ids(identity)
        module = view.module
        family = self.queries.family(module, hidden) if module is not None else None
        loradex_block = view.card_data.get("loradex")
        composition = _mapping(loradex_block, "composition")
        curve = composition.get("loss_curve")
        zero = composition.get("loss_zero_weights")
        loss = render.loss_chart(curve if isinstance(curve, list) else [],
                                 zero if isinstance(zero, int | float) else None)
        parents = module.lineage if module is not None else ()
        weights = render.weights_chart(
            [(p.parent_repo_id, p.weight) for p in parents if p.weight is not None]
        )
        return self.html(
            request, identity, "module.html", view=view, module=module, family=family,
            card_html=card_html, revision=shown_revision, base_url=self.base_url(request),
            peft_flags=_peft_flags(module), composition=_composition_facts(composition),
            loss=loss,
            weights=weights, hidden=hidden, history_limit=HISTORY_ON_PAGE,
            heads=_heads(view.hydra_config),
        )

    def _commits(self, request: Request, identity: Identity | None, repo_id: str) -> Response:
        namespace, name = repo_id.split("/", 1)
        repo_id = self.repo_id(namespace, name)
        commits, more = self.queries.history(identity, repo_id, 1000)
        return self.html(request, identity, "commits.html", repo_id=repo_id, commits=commits,
                         more=more)

    # ------------------------------------------------------------------ signing in

    def _sign_in_form(self, request: Request, identity: Identity | None) -> Response:
        return self.html(request, identity, "sign_in.html", message=None,
                         next_path=_local_path(request.query_params.get("next")))

    async def sign_in_post(self, request: Request) -> Response:
        """Check the pasted token; keep it in the cookie and go back, or say it was refused."""
        form = await self.form(request)
        next_path = _local_path(form.get("next"))
        if not self.session.csrf_ok(request, form.get(CSRF_FIELD)):
            return self.error_page(request, None, 403, "Forbidden",
                                   "The form expired or came from another site; reload the "
                                   "sign-in page and try again.")
        token = form.get("token", "").strip()
        identity = None
        if token and len(token) <= MAX_TOKEN_LENGTH and token.isascii():
            try:
                identity = await run_in_threadpool(self.service.authenticate, f"Bearer {token}")
            except HubHTTPError:
                identity = None
        if identity is None:
            return self.html(request, None, "sign_in.html", 401, next_path=next_path,
                             message="That token was not accepted: it is unknown or revoked.")
        response = RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
        self.session.sign_in(response, request, token)
        return response

    async def sign_out_post(self, request: Request) -> Response:
        """Forget the token and go to the search page."""
        form = await self.form(request)
        if not self.session.csrf_ok(request, form.get(CSRF_FIELD)):
            return self.error_page(request, None, 403, "Forbidden",
                                   "The form expired or came from another site; reload the "
                                   "page and try again.")
        response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        self.session.sign_out(response, request)
        return response

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        """A small url-encoded form (the sign-in and sign-out forms)."""
        body = await read_body(request, MAX_FORM_BYTES)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return {}
        return dict(pairs)

    @staticmethod
    def repo_id(namespace: str, name: str) -> str:
        """Validate the two halves of a repo id taken from a URL (a 404 page when invalid)."""
        repo_id = url_repo_id(namespace, name)
        if repo_id is None:
            raise HubHTTPError(404, f"no repository {namespace}/{name}")
        return repo_id


def _local_path(value: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 33 for c in value) or len(value) > 2000:
        return "/"
    return value


def _mapping(value: Any, key: str) -> dict[str, Any]:
    inner = value.get(key) if isinstance(value, dict) else None
    return inner if isinstance(inner, dict) else {}


PEFT_FLAGS = ("use_dora", "use_rslora", "lora_bias", "peft_version", "rank_pattern",
              "alpha_pattern", "init_lora_weights", "layers_to_transform", "fan_in_fan_out",
              "modules_to_save")


COMPOSITION_FACTS = ("method", "objective", "optimizer", "budget", "seed", "few_shot_examples",
                     "loss_zero_weights", "loss", "seconds")


def _composition_facts(composition: dict[str, Any]) -> list[tuple[str, str]]:
    """The composition settings the page lists, as (label, text)."""
    facts = []
    for key in COMPOSITION_FACTS:
        value = composition.get(key)
        if isinstance(value, dict):  # e.g. method: {name: lorahub, ...}
            value = value.get("name", ", ".join(f"{k}={v}" for k, v in value.items()))
        if value is not None and not isinstance(value, list):
            facts.append((key.replace("_", " "), str(value)))
    return facts


def _peft_flags(module: Any) -> list[tuple[str, str]]:
    """The PEFT config flags the registry records for ``module``, those that are set, as
    (name, text). Read with ``getattr``: registries indexed before a flag existed lack it."""
    if module is None:
        return []
    flags = []
    for name in PEFT_FLAGS:
        value = getattr(module, name, None)
        if value in (None, False, (), {}, ""):
            continue
        if value is True:
            text = "yes"
        elif isinstance(value, tuple | list):  # (pattern, value) pairs, or plain values
            text = ", ".join(f"{v[0]}: {v[1]}" if isinstance(v, tuple | list) and len(v) == 2
                             else str(v) for v in value)
        else:
            text = str(value)
        flags.append((name, text))
    return flags


def _heads(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Hydra module's heads as the page shows them: count, router and how N was chosen."""
    if config is None:
        return None
    selection = config.get("head_selection")
    selection = selection if isinstance(selection, dict) else {}
    groups = selection.get("heads")
    return {
        "num_heads": config.get("num_heads"),
        "router": config.get("router") if isinstance(config.get("router"), dict) else {},
        "method": selection.get("method"),
        "groups": [g for g in groups if isinstance(g, list)] if isinstance(groups, list) else [],
        "task": config.get("task") if isinstance(config.get("task"), dict) else {},
    }

