"""What the web pages read: hosted repos joined with their registry modules, visibility applied.

Every method is synchronous (the pages run them in the thread pool) and reads through the
server's own tables (``registry.hub_models``) for what a repo *is* (visibility, commits,
files, card) and through :class:`registry.store.RegistryStore` for what the registry knows
about its adapter (rank, base model, family, search). A private repo the viewer may not read
is treated everywhere as if it did not exist: not listed, not counted, its page a 404.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Engine, false, select, true
from sqlalchemy.orm import Session, sessionmaker

from loradex.errors import ModuleNotFound
from registry.cards import CARD, parse_card
from registry.entities import Module, SearchQuery
from registry.hub_models import SqlHubCommit, SqlHubRepo
from registry.hydra import CONFIG_NAME as HYDRA_CONFIG
from registry.models import LineageRow, ModuleRow
from registry.normalize import base_model_key, target_key
from registry.server.blobstore import BlobStore
from registry.server.queries import resolve_revision, tree_files, visible_repo
from registry.server.repos import DEFAULT_BRANCH
from registry.server.types import Identity, TreeFile
from registry.store import RegistryStore

# Cards and configs above this are shown truncated rather than read whole into a page.
MAX_CARD_BYTES = 512 * 1024
MAX_CONFIG_BYTES = 256 * 1024
# A search page counts its matches up to this many; beyond, it says "more than" (as
# `loradex search` does): an exact count of a broad query costs time proportional to its
# matches.
COUNT_LIMIT = 1_000
# With private repos hidden from the viewer, a page is found by reading the ranking from its
# start; deeper pages than this are refused (narrow the search instead).
MAX_HIDDEN_WALK = 2_000
HISTORY_ON_PAGE = 20
FAMILY_LIMIT = 20

_modules = cast(sa.Table, ModuleRow.__table__)
_lineage = cast(sa.Table, LineageRow.__table__)


class PageTooDeep(ValueError):
    """A results page beyond what can be found cheaply; the page answers 400."""


@dataclass(frozen=True)
class ResultsPage:
    """One page of visible modules and how many match in all (``total`` capped)."""

    modules: tuple[Module, ...]
    total: int
    total_is_exact: bool
    has_next: bool


@dataclass(frozen=True)
class CommitInfo:
    """One commit of a repo, as the history list shows it."""

    sha: str
    title: str
    message: str
    author: str
    created_at: datetime


@dataclass(frozen=True)
class RepoView:
    """Everything the module page shows of one repo at one revision."""

    repo_id: str
    namespace: str
    private: bool
    revision: str  # what the URL asked for ("main" or a sha)
    commit: CommitInfo
    is_head: bool
    files: tuple[TreeFile, ...]
    card_data: dict[str, Any]
    card_body: str
    card_truncated: bool
    history: tuple[CommitInfo, ...]
    history_more: bool
    module: Module | None  # the registry's entry (head only), None when not an adapter
    hydra_config: dict[str, Any] | None


@dataclass(frozen=True)
class Relative:
    """Another module of the family, as much as the page shows of it."""

    repo_id: str
    rank: int
    weight: float | None = None  # a child's weight on the module whose page this is
    same_rank: bool = False  # a compatible module's rank equals the module's


@dataclass(frozen=True)
class Family:
    """What was composed from a module, and what it can be combined with (its parents are
    the module's own ``lineage``)."""

    children: tuple[Relative, ...]
    compatible: tuple[Relative, ...]


class PrivateRepos:
    """Every private repo (id, namespace), read again only when a repo was created since.

    ``hub_repos.private`` has no index, so listing the private repos scans the table (25 ms
    at 100,000 repos on PostgreSQL), far too much for every page. A repo's privacy is set
    when it is created and no endpoint changes it, so the list can change only when a repo
    is created: the newest repo's (id, uid) is one primary-key lookup and tells. (A deleted
    private repo may stay in the list until then: hiding what no longer exists hides
    nothing.) If an endpoint ever changes a repo's privacy, it must also change this key.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._repos: tuple[tuple[str, str], ...] = ()

    def repos(self) -> tuple[tuple[str, str], ...]:
        """(repo id, namespace) of every private repo."""
        newest = select(SqlHubRepo.id, SqlHubRepo.uid).order_by(SqlHubRepo.id.desc()).limit(1)
        with self.engine.connect() as conn:
            key = tuple(conn.execute(newest).first() or ())
            with self._lock:
                if key != self._key:
                    rows = conn.execute(select(SqlHubRepo.full_id, SqlHubRepo.namespace)
                                        .where(SqlHubRepo.private == true())).all()
                    self._repos = tuple((r[0], r[1]) for r in rows)
                    self._key = key
                return self._repos


class WebQueries:
    """The reads of the web pages over one database, blob store and registry source."""

    def __init__(self, engine: Engine, blobs: BlobStore, source: str) -> None:
        self.engine = engine
        self.blobs = blobs
        self.source = source
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.store = RegistryStore(engine)
        self.private = PrivateRepos(engine)

    # ------------------------------------------------------------------ visibility

    def hidden_repo_ids(self, identity: Identity | None) -> frozenset[str]:
        """Private repos the viewer may not read (their modules are left out everywhere)."""
        return frozenset(repo for repo, namespace in self.private.repos()
                         if identity is None or namespace not in identity.namespaces)

    # ------------------------------------------------------------------ search

    def search(
        self, query: SearchQuery, hidden: frozenset[str], *, page: int, per_page: int
    ) -> ResultsPage:
        """One page of the server's modules matching ``query``, hidden repos left out."""
        query = replace(query, source=self.source)
        offset = page * per_page
        if not hidden:
            found = self.store.search_page(
                replace(query, offset=offset, limit=per_page), count_limit=COUNT_LIMIT
            )
            has_next = offset + per_page < found.total or not found.total_is_exact
            return ResultsPage(found.modules, found.total, found.total_is_exact, has_next)
        # Positions shift by the hidden modules ranked before them, which only the ranking
        # itself can tell: read it from the start, as far as this page (plus one to know
        # whether there is a next page), and skip the hidden ones.
        if offset + per_page > MAX_HIDDEN_WALK:
            raise PageTooDeep(f"pages beyond result {MAX_HIDDEN_WALK} are not served; "
                              "narrow the search")
        window = self.store.search_page(
            replace(query, offset=0, limit=offset + per_page + 1 + len(hidden)),
            count_limit=COUNT_LIMIT,
        )
        visible = [m for m in window.modules if m.repo_id not in hidden]
        total, exact = window.total, window.total_is_exact
        if exact:
            if len(window.modules) == window.total:  # the whole ranking was read
                total = len(visible)
            else:
                hidden_matches = {
                    repo for _, repo in self.store.matching_keys(query) if repo in hidden
                }
                total -= len(hidden_matches)
        return ResultsPage(
            tuple(visible[offset : offset + per_page]), total, exact,
            len(visible) > offset + per_page,
        )

    def counts_by_kind(self, base_model: str, hidden: frozenset[str]) -> dict[str, int]:
        """How many visible modules of each kind (lora, hydra) adapt ``base_model``."""
        m = _modules.c
        query = (
            select(m.kind, sa.func.count())
            .where(m.base_model_key == base_model_key(base_model), m.source == self.source)
            .group_by(m.kind)
        )
        if hidden:
            query = query.where(m.repo_id.not_in(sorted(hidden)))
        with self.engine.connect() as conn:
            return {kind: int(n) for kind, n in conn.execute(query).all()}

    # ------------------------------------------------------------------ one author

    def author_repos(
        self, namespace: str, identity: Identity | None, *, page: int, per_page: int
    ) -> tuple[list[tuple[str, bool, datetime]], bool, dict[str, Module]]:
        """An author's visible repos, newest first: (repo id, private, last modified), whether
        there is a next page, and the registry modules among them by repo id."""
        visible = [SqlHubRepo.private == false()]
        if identity is not None and namespace in identity.namespaces:
            visible = [true()]
        query = (
            select(SqlHubRepo.full_id, SqlHubRepo.private, SqlHubRepo.last_modified)
            .where(SqlHubRepo.namespace == namespace, sa.or_(*visible))
            .order_by(SqlHubRepo.last_modified.desc(), SqlHubRepo.full_id)
            .limit(per_page + 1)
            .offset(page * per_page)
        )
        with self.engine.connect() as conn:
            rows = [(r[0], bool(r[1]), r[2]) for r in conn.execute(query).all()]
        more = len(rows) > per_page
        rows = rows[:per_page]
        modules = self.store.modules_by_keys([(self.source, repo) for repo, _, _ in rows])
        return rows, more, {m.repo_id: m for m in modules}

    # ------------------------------------------------------------------ one repo

    def repo_view(self, identity: Identity | None, repo_id: str, revision: str) -> RepoView:
        """The repo at ``revision`` (404 HubHTTPError when missing or not visible)."""
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            head = resolve_revision(session, repo, DEFAULT_BRANCH)
            commit = head if revision == DEFAULT_BRANCH else resolve_revision(
                session, repo, revision)
            files = tree_files(session, commit.id)
            history, more = _history(session, head, HISTORY_ON_PAGE)
            private, namespace = bool(repo.private), repo.namespace
        is_head = commit.id == head.id
        by_path = {f.path: f for f in files}
        card_text, truncated = self._read_text(by_path.get(CARD), MAX_CARD_BYTES)
        try:
            _, body = parse_card(card_text)
        except ValueError:  # InvalidAdapter: a card whose YAML cannot be read shows as text
            body = card_text or ""
        module = None
        if is_head:
            try:
                module = self.store.get_module(repo_id, source=self.source)
            except ModuleNotFound:
                module = None
        hydra_config = None
        if module is not None and module.kind == "hydra":
            config_text, _ = self._read_text(by_path.get(HYDRA_CONFIG), MAX_CONFIG_BYTES)
            hydra_config = _json_object(config_text)
        return RepoView(
            repo_id=repo_id,
            namespace=namespace,
            private=private,
            revision=revision,
            commit=_commit_info(commit),
            is_head=is_head,
            files=tuple(files),
            card_data=_json_object(commit.card_data) or {},
            card_body=body,
            card_truncated=truncated,
            history=history,
            history_more=more,
            module=module,
            hydra_config=hydra_config,
        )

    def history(
        self, identity: Identity | None, repo_id: str, limit: int
    ) -> tuple[tuple[CommitInfo, ...], bool]:
        """The default branch's commits, newest first, at most ``limit`` (and whether more)."""
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            head = resolve_revision(session, repo, DEFAULT_BRANCH)
            return _history(session, head, limit)

    def family(self, module: Module, hidden: frozenset[str]) -> Family:
        """Children (modules listing ``module`` as a parent) and compatible modules."""
        m, lin = _modules.c, _lineage.c
        query = (
            select(m.repo_id, m.rank, lin.weight)
            .join(_lineage, lin.module_id == m.id)
            .where(lin.parent_repo_id == module.repo_id, m.source == self.source)
            .order_by(m.repo_id, lin.position)
            .limit(FAMILY_LIMIT + len(hidden))
        )
        with self.engine.connect() as conn:
            children: dict[str, Relative] = {}
            for repo, rank, weight in conn.execute(query).all():
                if repo not in hidden and repo not in children:
                    children[repo] = Relative(repo, rank, weight)
            compatible = self._compatible(conn, module, hidden)
        return Family(tuple(children.values())[:FAMILY_LIMIT], tuple(compatible))

    def _compatible(
        self, conn: sa.Connection, module: Module, hidden: frozenset[str]
    ) -> list[Relative]:
        """Up to FAMILY_LIMIT modules of the same kind, base model and target set, the same
        rank first, most downloaded first.

        The store's ``compatible_with`` loads and sorts every compatible module (thousands
        at 100,000 modules); here each rank group is one query that walks the
        (base model, downloads) index and stops at the page, and reads two columns. SQLite
        left to itself finds the group by the (base, targets, rank) index and sorts it
        (5.8 ms against 0.2 ms at 100,000 modules), so it is told which index to walk.
        """
        m = _modules.c
        base = select(m.repo_id, m.rank).with_hint(
            _modules, "INDEXED BY ix_modules_base_downloads", "sqlite"
        ).where(
            m.base_model_key == base_model_key(module.base_model),
            m.target_key == target_key(module.target_modules),
            m.source == self.source,
            m.kind == module.kind,  # a Hydra module and a LoRA are never combined
            m.repo_id != module.repo_id,
        )
        wanted = FAMILY_LIMIT + len(hidden)
        found: list[Relative] = []
        for same in (True, False):
            rank_test = m.rank == module.rank if same else m.rank != module.rank
            query = base.where(rank_test).order_by(m.downloads.desc(), m.id)
            found += [Relative(repo, rank, same_rank=same)
                      for repo, rank in conn.execute(query.limit(wanted - len(found))).all()
                      if repo not in hidden]
            if len(found) >= FAMILY_LIMIT:
                break
        return found[:FAMILY_LIMIT]

    def _read_text(self, entry: TreeFile | None, limit: int) -> tuple[str | None, bool]:
        """A small file of the repo as text (its first ``limit`` bytes), and whether cut."""
        if entry is None:
            return None, False
        path = self.blobs.path_for(entry.sha256)
        try:
            with path.open("rb") as fh:
                data = fh.read(limit + 1)
        except OSError:
            return None, False
        return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def _commit_info(commit: SqlHubCommit) -> CommitInfo:
    return CommitInfo(commit.sha, commit.title, commit.message, commit.author, commit.created_at)


def _history(
    session: Session, head: SqlHubCommit, limit: int
) -> tuple[tuple[CommitInfo, ...], bool]:
    commits: list[CommitInfo] = []
    commit: SqlHubCommit | None = head
    while commit is not None and len(commits) < limit:
        commits.append(_commit_info(commit))
        commit = session.get(SqlHubCommit, commit.parent_id) if commit.parent_id else None
    return tuple(commits), commit is not None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

