"""The SQL of a registry search: filters, tag/target terms, full-text matching and ranking,
sort orders. :class:`SearchStatements` is part of :class:`registry.store.RegistryStore` (a
mixin over the same engine), which runs what these build.

Full text uses each database's own engine: an FTS5 table on SQLite (bm25) and a tsvector
column with a GIN index on PostgreSQL (ts_rank); both are called ``module_fts``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy import Connection

from registry.entities import SearchQuery
from registry.models import LineageRow, ModuleRow, ModuleTagRow, ModuleTargetRow
from registry.normalize import base_model_key, normalize_license, normalize_tags, normalize_targets

FTS_TABLE = "module_fts"
# A tag/target carried by at most this many modules is where a filtered search starts.
_DRIVER_MAX = 2000
# Counting a value's modules beyond this tells nothing more about which value is rarest.
_POSTING_CAP = 20_000
# bm25 column weights on SQLite: repo id, task text, tags, card.
_BM25_WEIGHTS: tuple[sa.ColumnElement[Any], ...] = tuple(
    sa.literal_column(w) for w in ("8.0", "4.0", "4.0", "1.0")
)
# A word, as both full-text engines split text (queries and indexed text alike).
WORD = re.compile(r"[^\W_]+")

_modules = cast(sa.Table, ModuleRow.__table__)
_tags = cast(sa.Table, ModuleTagRow.__table__)
_targets = cast(sa.Table, ModuleTargetRow.__table__)
_lineage = cast(sa.Table, LineageRow.__table__)


def search_tokens(text: str | None) -> list[str]:
    """The words of a free-text query, as both full-text engines split them."""
    return WORD.findall(text.lower()) if text else []


@dataclass(frozen=True)
class SearchTerms:
    """The --target/--tag conditions of a search (a module must have every one).

    ``sizes`` are how many modules carry each value (capped; empty when a full-text match
    already narrows the search). A count joins the value tables, rarest first, so it reads
    two small indexes instead of module rows. A page does the same only when the rarest value
    is rare; for broad values, probing rows (``EXISTS``) while walking the sort column's index
    finds the first page without collecting and sorting every module that carries them.
    """

    terms: list[tuple[sa.Table, str, str]]
    sizes: list[int]
    tokens: list[str]

    def _by_rarity(self) -> list[tuple[sa.Table, str, str]]:
        if not self.sizes:
            return list(self.terms)
        order = sorted(range(len(self.terms)), key=self.sizes.__getitem__)
        return [self.terms[i] for i in order]

    def apply(self, stmt: sa.Select[Any], *, page: bool) -> sa.Select[Any]:
        """``stmt`` (over ``modules``) with every term added, planned for a count or a page."""
        module_id = _modules.c.id
        join = bool(self.sizes) and (not page or min(self.sizes) <= _DRIVER_MAX)
        for i, (table, column, value) in enumerate(self._by_rarity()):
            if join:
                held = table.alias(f"term_{i}")
                stmt = stmt.join(held, sa.and_(held.c.module_id == module_id,
                                               held.c[column] == value))
            else:
                stmt = stmt.where(
                    sa.exists().where(table.c.module_id == module_id, table.c[column] == value)
                )
        return stmt

    def alone(self) -> sa.Select[Any]:
        """The ids carrying every term, from the term tables only (no other filter given)."""
        (first, column, value), *rest = self._by_rarity()
        driver = first.alias("term_0")
        stmt = sa.select(driver.c.module_id).where(driver.c[column] == value)
        for i, (table, col, val) in enumerate(rest, start=1):
            held = table.alias(f"term_{i}")
            stmt = stmt.join(held, sa.and_(held.c.module_id == driver.c.module_id,
                                           held.c[col] == val))
        return stmt


class SearchStatements:
    """Statement building of :class:`~registry.store.RegistryStore` searches."""

    _sqlite: bool

    if TYPE_CHECKING:  # provided by RegistryStore, which this class is part of
        def _resolve_id(self, conn: Connection, repo_id: str, source: str | None) -> int: ...

    def _join_text(
        self, stmt: sa.Select[Any], tokens: list[str], *, scored: bool
    ) -> sa.Select[Any]:
        """Join the full-text index on ``tokens`` (all must match, each as a prefix).

        A plain join, not a subquery: the database starts from the index matches, checks the
        other filters on each, and scores (bm25 / ts_rank, higher is better as ``score``) only
        the rows that survive, and only when the sort needs it.
        """
        module_id = _modules.c.id
        score: sa.ColumnElement[Any]
        if self._sqlite:
            fts = sa.table(FTS_TABLE, sa.column("rowid"))
            match = " ".join(f'"{t}"*' for t in tokens)
            stmt = stmt.join(fts, fts.c.rowid == module_id).where(
                sa.literal_column(FTS_TABLE).op("MATCH")(match)
            )
            score = -sa.func.bm25(sa.literal_column(FTS_TABLE), *_BM25_WEIGHTS)
        else:
            fts = sa.table(FTS_TABLE, sa.column("module_id"), sa.column("document"))
            tsquery = sa.func.to_tsquery(
                sa.literal_column("'english'"), " & ".join(f"{t}:*" for t in tokens)
            )
            stmt = stmt.join(fts, fts.c.module_id == module_id).where(
                fts.c.document.op("@@")(tsquery)
            )
            score = sa.func.ts_rank(fts.c.document, tsquery)
        return stmt.add_columns(score.label("score")) if scored else stmt

    def _fenced(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        """``stmt`` with ``OFFSET 0`` on PostgreSQL, so the planner keeps it a subquery.

        Flattened into the query around it, its ``ts_rank`` would be computed after the count
        window, which then carries every match's whole tsvector and spills them to disk: 100 ms
        instead of 40 ms for a word matching 15,000 of 100,000 modules (docs/benchmarks/web.md).
        """
        return stmt if self._sqlite else stmt.offset(0)

    def _pg_ranked_survivors(self, stmt: sa.Select[Any], terms: SearchTerms) -> sa.Select[Any]:
        """(id, downloads, score) on PostgreSQL, ts_rank computed after the other filters.

        Left to itself the planner sorts every text match by ts_rank first (to feed an
        incremental sort), ranking thousands of documents the filters then throw away. The
        materialised CTE ranks each survivor once and keeps only its score: carrying the
        documents out of it (to rank outside) spilled them to disk and cost 250 ms p50 for one
        word matching 15,000 of 100,000 modules, against 40 ms (docs/benchmarks/web.md).
        """
        tsquery = sa.func.to_tsquery(
            sa.literal_column("'english'"), " & ".join(f"{t}:*" for t in terms.tokens)
        )
        document: sa.ColumnElement[Any] = sa.literal_column(f"{FTS_TABLE}.document")
        matches = (
            self._with_text(stmt, terms, scored=False, page=True)
            .add_columns(_modules.c.downloads, sa.func.ts_rank(document, tsquery).label("score"))
            .cte("matches")
            .prefix_with("MATERIALIZED")
        )
        return sa.select(matches.c.id, matches.c.downloads, matches.c.score)

    def _text_only(self, tokens: list[str]) -> sa.Select[Any]:
        """(id, score) of the modules matching ``tokens``, from the full-text index alone."""
        if self._sqlite:
            fts = sa.table(FTS_TABLE, sa.column("rowid"))
            match = " ".join(f'"{t}"*' for t in tokens)
            score = -sa.func.bm25(sa.literal_column(FTS_TABLE), *_BM25_WEIGHTS)
            return sa.select(fts.c.rowid.label("id"), score.label("score")).where(
                sa.literal_column(FTS_TABLE).op("MATCH")(match)
            )
        fts = sa.table(FTS_TABLE, sa.column("module_id"), sa.column("document"))
        tsquery = sa.func.to_tsquery(
            sa.literal_column("'english'"), " & ".join(f"{t}:*" for t in tokens)
        )
        return sa.select(
            fts.c.module_id.label("id"), sa.func.ts_rank(fts.c.document, tsquery).label("score")
        ).where(fts.c.document.op("@@")(tsquery))

    def _filtered(self, conn: Connection, q: SearchQuery) -> tuple[sa.Select[Any], SearchTerms]:
        """The ids matching the column filters of ``q``, and its tag/target/text terms."""
        m = _modules.c
        stmt: sa.Select[Any] = sa.select(m.id)
        tokens = search_tokens(q.text)
        if q.base_model:
            stmt = stmt.where(m.base_model_key == base_model_key(q.base_model))
        if q.rank is not None:
            stmt = stmt.where(m.rank == q.rank)
        if q.min_rank is not None:
            stmt = stmt.where(m.rank >= q.min_rank)
        if q.max_rank is not None:
            stmt = stmt.where(m.rank <= q.max_rank)
        if q.task:
            stmt = stmt.where(sa.or_(m.task_name == q.task, m.task_category == q.task))
        if q.author:
            stmt = stmt.where(m.author == q.author)
        if q.license:
            stmt = stmt.where(m.license == normalize_license(q.license))
        if q.peft_type:
            stmt = stmt.where(m.peft_type == q.peft_type.upper())
        if q.kind:
            stmt = stmt.where(m.kind == q.kind.lower())
        if q.source and not self._only_source(conn, q.source):
            stmt = stmt.where(m.source == q.source)
        if q.composable:
            # What the composer can use as a plain LoRA (registry.peft_options).
            stmt = stmt.where(
                m.use_dora.is_(False), m.lora_bias.is_(False), m.rank_pattern.is_(None),
                m.alpha_pattern.is_(None), m.modules_to_save.is_(None),
                m.layers_to_transform.is_(None),
            )
        if not q.include_composed:
            stmt = stmt.where(~sa.exists().where(_lineage.c.module_id == m.id))
        if q.compatible_with:
            ref_id = self._resolve_id(conn, q.compatible_with, None)
            ref = conn.execute(
                sa.select(m.base_model_key, m.target_key, m.use_dora).where(m.id == ref_id)
            ).one()
            stmt = stmt.where(
                m.base_model_key == ref.base_model_key,
                m.target_key == ref.target_key,
                m.use_dora == ref.use_dora,
                m.id != ref_id,
            )
        terms = [(_targets, "target", t) for t in normalize_targets(q.targets)]
        terms += [(_tags, "tag", t) for t in normalize_tags(q.tags)]
        sizes = [] if tokens else [self._posting_size(conn, *term) for term in terms]
        return stmt, SearchTerms(terms, sizes, tokens)

    @staticmethod
    def _only_source(conn: Connection, source: str) -> bool:
        """Whether no module has another source: then filtering on it is a no-op that would
        still cost a pass over every text match's module row (a server's registry usually
        holds only its own modules). Two probes of the (source, repo_id) index."""
        m = _modules.c
        return not any(
            conn.scalar(sa.select(m.id).where(other).limit(1)) is not None
            for other in (m.source < source, m.source > source)
        )

    def _counted(self, stmt: sa.Select[Any], terms: SearchTerms) -> sa.Select[Any]:
        """What to count: the term tables alone when nothing else filters, else everything."""
        if stmt.whereclause is None and terms.terms and not terms.tokens:
            return terms.alone()
        return self._with_text(stmt, terms, scored=False)

    def _with_text(
        self, stmt: sa.Select[Any], terms: SearchTerms, *, scored: bool, page: bool = False
    ) -> sa.Select[Any]:
        """Add the full-text match (and its score column, if any) and the tag/target terms."""
        if terms.tokens:
            stmt = self._join_text(stmt, terms.tokens, scored=scored)
        return terms.apply(stmt, page=page)

    @staticmethod
    def _posting_size(conn: Connection, table: sa.Table, column: str, value: str) -> int:
        capped = (
            sa.select(table.c.module_id).where(table.c[column] == value).limit(_POSTING_CAP)
        ).subquery()
        return int(conn.scalar(sa.select(sa.func.count()).select_from(capped)) or 0)

    @staticmethod
    def _order(q: SearchQuery, score: sa.ColumnElement[Any] | None) -> list[Any]:
        m = _modules.c
        sort = q.effective_sort
        if sort == "relevance" and score is not None:
            return [score.desc(), m.downloads.desc(), m.id]
        if sort == "likes":
            return [m.likes.desc(), m.id]
        if sort == "updated":
            return [m.updated_at.desc().nulls_last(), m.id]
        if sort == "rank":
            return [m.rank, m.downloads.desc(), m.id]
        return [m.downloads.desc(), m.id]
