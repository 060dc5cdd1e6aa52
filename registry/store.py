"""The registry store: the only code that reads or writes the module index tables.

``RegistryStore`` takes an engine (pass it in; no globals) and hands out plain entities.
Writes replace everything known about one ``(source, repo_id)`` in one transaction, so a
module is never seen half-indexed, and a failed write leaves the previous version intact.
Full-text search uses the database's own engine: an FTS5 table on SQLite (bm25 ranking) and
a tsvector column with a GIN index on PostgreSQL (ts_rank); both are called ``module_fts``
and created by the migration.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import sessionmaker

from loradex.errors import ModuleNotFound
from registry.db import display_url
from registry.db_errors import translate
from registry.entities import (
    Compatibility,
    LineageEdge,
    Module,
    ModuleFile,
    SearchPage,
    SearchQuery,
)
from registry.models import (
    LineageRow,
    ModuleCardRow,
    ModuleFileRow,
    ModuleRow,
    ModuleSignatureRow,
    ModuleTagRow,
    ModuleTargetRow,
    module_entity,
)
from registry.normalize import (
    base_model_key,
    normalize_license,
    normalize_tags,
    normalize_targets,
    recorded_base_model,
    target_key,
)
from registry.search_sql import FTS_TABLE, WORD, SearchStatements
from registry.signature_store import SignatureQueries, signature_row
from registry.sync_state_store import SyncStateQueries

# Bulk loads at least this big end with ANALYZE, so the planner picks the right indexes.
_ANALYZE_AFTER = 1000
# Ids per IN (...) when loading modules: well under every backend's parameter limit.
_LOAD_CHUNK = 900
# Card text beyond this adds little to ranking and bloats the index.
_FTS_CARD_CHARS = 20_000
# The PostgreSQL document, built from the staged text columns (alias s).
_PG_DOCUMENT = (
    "setweight(to_tsvector('english', s.repo), 'A') || "
    "setweight(to_tsvector('english', s.task), 'B') || "
    "setweight(to_tsvector('english', s.tags), 'B') || "
    "setweight(to_tsvector('english', s.card), 'C')"
)

_modules = cast(sa.Table, ModuleRow.__table__)
_tags = cast(sa.Table, ModuleTagRow.__table__)
_targets = cast(sa.Table, ModuleTargetRow.__table__)
_files = cast(sa.Table, ModuleFileRow.__table__)
_lineage = cast(sa.Table, LineageRow.__table__)
_cards = cast(sa.Table, ModuleCardRow.__table__)
_signatures = cast(sa.Table, ModuleSignatureRow.__table__)
_CHILD_TABLES = (_tags, _targets, _files, _lineage, _cards, _signatures)
# SQLite page cache and memory map per connection: the filter columns of 100k modules fit.
_SQLITE_TUNING = ("PRAGMA cache_size = -65536", "PRAGMA mmap_size = 268435456",
                  "PRAGMA temp_store = MEMORY")



def _by_module_ids(table: sa.Table, *columns: str, order: str | None = None) -> sa.Select[Any]:
    ids: sa.BindParameter[list[int]] = sa.bindparam("ids", expanding=True)
    stmt = sa.select(table.c.module_id, *(table.c[c] for c in columns))
    stmt = stmt.where(table.c.module_id.in_(ids))
    return stmt.order_by(table.c.module_id, table.c[order]) if order else stmt


# Built once: the batch loader runs these for every page of results.
_CHILD_QUERIES: dict[str, sa.Select[Any]] = {
    "tags": _by_module_ids(_tags, "tag", order="tag"),
    "targets": _by_module_ids(_targets, "target", order="target"),
    "files": _by_module_ids(_files, "path", "size", "sha256", "lfs", order="path"),
    "lineage": _by_module_ids(
        _lineage, "parent_repo_id", "parent_revision", "weight", "role", order="position"
    ),
    "cards": _by_module_ids(_cards, "card_text"),
}
_MODULES_BY_ID = sa.select(_modules).where(_modules.c.id.in_(sa.bindparam("ids", expanding=True)))


def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in _SQLITE_TUNING:
        cursor.execute(pragma)
    cursor.close()


def _fts_text(value: str | None) -> str:
    return " ".join(WORD.findall(value)) if value else ""


class RegistryStore(SearchStatements, SignatureQueries, SyncStateQueries):
    """Index, search and look up modules in one registry database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._sqlite = engine.dialect.name == "sqlite"
        if self._sqlite and not event.contains(engine, "connect", _tune_sqlite):
            event.listen(engine, "connect", _tune_sqlite)

    @classmethod
    def from_url(cls, url: str, *, ensure_schema: bool = True) -> RegistryStore:
        """A store on ``url``; by default first brings the schema up to date."""
        from registry.db import make_engine

        if ensure_schema:
            from registry.schema import ensure_schema as _ensure

            _ensure(url)
        return cls(make_engine(url))

    # ------------------------------------------------------------------ writes

    def upsert_module(self, module: Module) -> Module:
        """Insert or replace one module (and its files, tags, targets, lineage); return it as
        stored, read back in the same transaction (another writer of the same repo may
        replace it the moment this one commits)."""
        with self.engine.begin() as conn:
            self._write(conn, [module])
            module_id = self._resolve_id(conn, module.repo_id, module.source)
            return self._load(conn, [module_id])[0]

    def bulk_upsert(self, modules: Iterable[Module], *, batch_size: int = 2000) -> int:
        """Insert or replace many modules with batched core inserts; return how many.

        Each batch is one transaction; within a batch the last occurrence of a repo wins.
        """
        count = 0
        analyzed = 0
        batch: list[Module] = []
        for module in modules:
            batch.append(module)
            if len(batch) >= batch_size:
                count += self._write_batch(batch)
                batch = []
                if not self._sqlite and count >= 2 * max(analyzed, batch_size):
                    # Without fresh statistics PostgreSQL plans each batch's key lookup
                    # against a table it believes is empty (a sequential scan that grows
                    # with the table); refreshing them whenever the table doubles keeps
                    # the lookup on the unique index (100k rows: 159 s -> 34 s).
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql("ANALYZE modules")
                    analyzed = count
        if batch:
            count += self._write_batch(batch)
        if count >= _ANALYZE_AFTER:
            self.analyze()
        return count

    def analyze(self) -> None:
        """Refresh the query planner's statistics (worth it after a large bulk load)."""
        with self.engine.begin() as conn:
            if self._sqlite:
                conn.exec_driver_sql("ANALYZE")
            else:
                for table in ("modules", "module_tags", "module_targets", FTS_TABLE):
                    conn.exec_driver_sql(f"ANALYZE {table}")

    def _write_batch(self, batch: Sequence[Module]) -> int:
        unique = list({(m.source, m.repo_id): m for m in batch}.values())
        with self.engine.begin() as conn:
            self._write(conn, unique)
        return len(unique)

    def _write(self, conn: Connection, modules: Sequence[Module]) -> None:
        self._delete_rows(conn, self._existing_ids(conn, [(m.source, m.repo_id) for m in modules]))
        now = datetime.now(UTC)
        rows = [self._module_row(m, now) for m in modules]
        ids = self._insert_modules(conn, rows)
        tags, targets, files, lineage, cards, fts, sigs = [], [], [], [], [], [], []
        for module_id, module, row in zip(ids, modules, rows, strict=True):
            tags += [{"module_id": module_id, "tag": t} for t in normalize_tags(module.tags)]
            targets += [
                {"module_id": module_id, "target": t}
                for t in normalize_targets(module.target_modules)
            ]
            files += [
                {"module_id": module_id, "path": f.path, "size": f.size, "sha256": f.sha256,
                 "lfs": f.lfs}
                for f in {f.path: f for f in module.files}.values()
            ]
            lineage += [
                {"module_id": module_id, "position": i, "parent_repo_id": e.parent_repo_id,
                 "parent_revision": e.parent_revision, "weight": e.weight, "role": e.role}
                for i, e in enumerate(module.lineage)
            ]
            if module.card_text:
                cards.append({"module_id": module_id, "card_text": module.card_text})
            sigs += [signature_row(module_id, sig)
                     for sig in {(x.kind, x.embedder): x for x in module.signatures}.values()]
            fts.append(self._fts_row(module_id, module, row))
        for table, values in ((_tags, tags), (_targets, targets), (_files, files),
                              (_lineage, lineage), (_cards, cards), (_signatures, sigs)):
            self._insert_rows(conn, table, values)
        if self._sqlite:
            conn.execute(
                sa.text(
                    f"INSERT INTO {FTS_TABLE} (rowid, repo_id, task, tags, card) "
                    "VALUES (:id, :repo, :task, :tags, :card)"
                ),
                fts,
            )
        else:
            # Stage the text with COPY, then build every tsvector in one statement.
            conn.exec_driver_sql(
                "CREATE TEMP TABLE IF NOT EXISTS module_fts_stage "
                "(id integer, repo text, task text, tags text, card text) ON COMMIT DELETE ROWS"
            )
            self._copy(conn, "module_fts_stage", ["id", "repo", "task", "tags", "card"], fts)
            conn.exec_driver_sql(
                f"INSERT INTO {FTS_TABLE} (module_id, document) "
                f"SELECT s.id, {_PG_DOCUMENT} FROM module_fts_stage AS s"
            )
            conn.exec_driver_sql("TRUNCATE module_fts_stage")

    def _insert_modules(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """Insert ``modules`` rows; return their new ids in order."""
        if self._sqlite:
            # One executemany, then read the ids back by key (inside this transaction, which
            # holds SQLite's write lock): ordered RETURNING would insert row by row.
            conn.execute(sa.insert(_modules), rows)
            keys = [(row["source"], row["repo_id"]) for row in rows]
            found = dict(self._existing_keys(conn, keys))
            return [found[key] for key in keys]
        # PostgreSQL: take ids from the sequence, then COPY (a multi-row INSERT of thousands
        # of rows spends most of its time being parsed on the client).
        ids = list(conn.scalars(
            sa.text(
                "SELECT nextval(pg_get_serial_sequence('modules', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": len(rows)},
        ))
        for module_id, row in zip(ids, rows, strict=True):
            row["id"] = module_id
        self._insert_rows(conn, _modules, rows)
        return ids

    def _insert_rows(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        if self._sqlite:
            # Child rows hold only ints, strings, floats and bools: skip per-value processing.
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join("?" for _ in columns)
            conn.exec_driver_sql(
                f"INSERT INTO {table.name} ({names}) VALUES ({marks})",
                [tuple(row[c] for c in columns) for row in rows],
            )
        else:
            self._copy(conn, table.name, columns, rows)

    @staticmethod
    def _copy(conn: Connection, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """COPY ``rows`` into ``table`` through the connection's psycopg cursor."""
        import psycopg

        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        names = ", ".join(f'"{c}"' for c in columns)
        statement = f"COPY {table} ({names}) FROM STDIN"
        try:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        except psycopg.Error as exc:
            # Same typed errors as every other statement (COPY bypasses SQLAlchemy's hook).
            error = translate(exc, display_url(conn.engine.url.render_as_string()))
            if error is not None:
                raise error from exc
            raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc

    @staticmethod
    def _module_row(m: Module, now: datetime) -> dict[str, Any]:
        base, is_path = recorded_base_model(m.base_model)
        return {
            "source": m.source,
            "repo_id": m.repo_id,
            "revision": m.revision,
            "kind": m.kind,
            "num_heads": m.num_heads,
            "base_model": base,
            "base_model_key": base_model_key(base),
            "base_model_raw": m.base_model_raw if m.base_model_raw is not None else m.base_model,
            "peft_type": m.peft_type.upper(),
            "task_type": m.task_type,
            "rank": m.rank,
            "alpha": m.alpha,
            "dropout": m.dropout,
            "target_key": target_key(m.target_modules),
            "bias": m.bias,
            "num_parameters": m.num_parameters,
            "dtype": m.dtype,
            "total_size": m.total_size,
            "author": m.author,
            "license": normalize_license(m.license),
            "task_name": m.task_name,
            "task_category": m.task_category,
            "dataset": m.dataset,
            "language": m.language,
            "description": m.description,
            "use_dora": m.use_dora,
            "use_rslora": m.use_rslora,
            "lora_bias": m.lora_bias,
            "peft_version": m.peft_version,
            "rank_pattern": _json_or_none(dict(m.rank_pattern)),
            "alpha_pattern": _json_or_none(dict(m.alpha_pattern)),
            "modules_to_save": _json_or_none(list(m.modules_to_save)),
            "layers_to_transform": _json_or_none(list(m.layers_to_transform)),
            "base_model_is_path": is_path,
            "local_path": m.local_path,
            "downloads": m.downloads,
            "likes": m.likes,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
            "indexed_at": now,
        }

    @staticmethod
    def _fts_row(module_id: int, m: Module, row: dict[str, Any]) -> dict[str, Any]:
        task = " ".join(
            v for v in (m.task_name, m.task_category, m.description, m.dataset, m.language,
                        row["base_model"]) if v
        )
        return {
            "id": module_id,
            "repo": _fts_text(m.repo_id),
            "task": _fts_text(task),
            "tags": _fts_text(" ".join(normalize_tags(m.tags))),
            "card": _fts_text((m.card_text or "")[:_FTS_CARD_CHARS]),
        }

    def _existing_ids(self, conn: Connection, keys: Sequence[tuple[str, str]]) -> list[int]:
        return [module_id for _key, module_id in self._existing_keys(conn, keys)]

    @staticmethod
    def _existing_keys(
        conn: Connection, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[tuple[str, str], int]]:
        """((source, repo_id), id) of the given keys that are in the index."""
        found: list[tuple[tuple[str, str], int]] = []
        by_source: dict[str, list[str]] = {}
        for source, repo_id in keys:
            by_source.setdefault(source, []).append(repo_id)
        m = _modules.c
        for source, repo_ids in by_source.items():
            for start in range(0, len(repo_ids), 500):
                chunk = repo_ids[start : start + 500]
                rows = conn.execute(
                    sa.select(m.repo_id, m.id).where(m.source == source, m.repo_id.in_(chunk))
                ).all()
                found += [((source, repo_id), module_id) for repo_id, module_id in rows]
        return found

    def _delete_rows(self, conn: Connection, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            for table in _CHILD_TABLES:
                conn.execute(sa.delete(table).where(table.c.module_id.in_(chunk)))
            id_list: sa.BindParameter[list[int]] = sa.bindparam("ids", expanding=True)
            fts_key = "rowid" if self._sqlite else "module_id"
            conn.execute(
                sa.text(f"DELETE FROM {FTS_TABLE} WHERE {fts_key} IN :ids").bindparams(id_list),
                {"ids": chunk},
            )
            conn.execute(sa.delete(_modules).where(_modules.c.id.in_(chunk)))

    def delete_module(self, repo_id: str, source: str | None = None) -> None:
        """Remove a module and everything attached to it; raises ModuleNotFound."""
        with self.engine.begin() as conn:
            module_id = self._resolve_id(conn, repo_id, source)
            self._delete_rows(conn, [module_id])

    # ------------------------------------------------------------------ reads

    def _resolve_id(self, conn: Connection, repo_id: str, source: str | None) -> int:
        stmt = sa.select(_modules.c.id).where(_modules.c.repo_id == repo_id)
        if source is not None:
            stmt = stmt.where(_modules.c.source == source)
        # Same repo id from several sources: the most recently indexed one.
        found = conn.scalar(stmt.order_by(_modules.c.indexed_at.desc(), _modules.c.id.desc()))
        if found is None:
            where = f" from {source}" if source else ""
            raise ModuleNotFound(f"module {repo_id!r}{where} is not in the registry")
        return int(found)

    def _load(self, conn: Connection, ids: Sequence[int]) -> list[Module]:
        """Full entities for ``ids``, in that order: six indexed queries, whatever the count."""
        if len(ids) > _LOAD_CHUNK:
            return [m for start in range(0, len(ids), _LOAD_CHUNK)
                    for m in self._load(conn, ids[start : start + _LOAD_CHUNK])]
        if not ids:
            return []
        params = {"ids": list(ids)}
        children: dict[str, dict[int, list[tuple[Any, ...]]]] = {}
        for name, stmt in _CHILD_QUERIES.items():
            found: dict[int, list[tuple[Any, ...]]] = {}
            for row in conn.execute(stmt, params).all():
                found.setdefault(row[0], []).append(tuple(row)[1:])
            children[name] = found
        rows = {row["id"]: row for row in conn.execute(_MODULES_BY_ID, params).mappings().all()}
        tags, targets = children["tags"], children["targets"]
        files, lineage, cards = children["files"], children["lineage"], children["cards"]
        return [
            module_entity(
                rows[i],
                tags=(t for (t,) in tags.get(i, ())),
                targets=(t for (t,) in targets.get(i, ())),
                files=(ModuleFile(*f) for f in files.get(i, ())),
                lineage=(LineageEdge(*e) for e in lineage.get(i, ())),
                card_text=cards[i][0][0] if i in cards else None,
            )
            for i in ids
            if i in rows
        ]

    def get_module(self, repo_id: str, source: str | None = None) -> Module:
        """The module with this repo id (from ``source`` if given); raises ModuleNotFound."""
        with self.engine.connect() as conn:
            return self._load(conn, [self._resolve_id(conn, repo_id, source)])[0]

    def count(self, query: SearchQuery | None = None, *, limit: int | None = None) -> int:
        """How many modules match ``query`` (all modules when None); stops at ``limit``."""
        query = query or SearchQuery()
        with self.engine.connect() as conn:
            stmt, terms = self._filtered(conn, query)
            return self._count(conn, self._counted(stmt, terms), limit)

    @staticmethod
    def _count(conn: Connection, stmt: sa.Select[Any], limit: int | None) -> int:
        if limit is not None:
            stmt = stmt.limit(limit)
        return int(conn.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0)

    def search(self, query: SearchQuery) -> list[Module]:
        """One page of modules matching ``query``, in its sort order (see ``count`` for total)."""
        return list(self.search_page(query).modules)

    def search_page(self, query: SearchQuery, *, count_limit: int | None = None) -> SearchPage:
        """One page of matching modules and the number of matches.

        With ``count_limit``, counting stops there (``total_is_exact`` is then False when
        there are more): an exact count of a broad query costs time proportional to its
        matches, a page does not.
        """
        with self.engine.connect() as conn:
            stmt, terms = self._filtered(conn, query)
            if terms.tokens and query.effective_sort == "relevance":
                # Ranking visits every match anyway: count them in the same pass.
                # (bm25 cannot sit next to a window function: score in a subquery.)
                if stmt.whereclause is None and not terms.terms:
                    # Text alone: rank inside the full-text index, no module row needed
                    # (ties are then broken by id, not downloads).
                    inner = self._fenced(self._text_only(terms.tokens)).subquery()
                    tiebreak: list[Any] = [inner.c.id]
                elif self._sqlite:
                    ranked = self._with_text(stmt, terms, scored=True, page=True)
                    inner = ranked.add_columns(_modules.c.downloads).subquery()
                    tiebreak = [inner.c.downloads.desc(), inner.c.id]
                else:  # a materialised CTE: a fence of its own
                    inner = self._pg_ranked_survivors(stmt, terms).subquery()
                    tiebreak = [inner.c.downloads.desc(), inner.c.id]
                ordered = sa.select(
                    inner.c.id, sa.func.count().over().label("total")
                ).order_by(inner.c.score.desc(), *tiebreak)
                rows = conn.execute(ordered.limit(query.limit).offset(query.offset)).all()
                if rows:
                    modules = self._load(conn, [row.id for row in rows])
                    return SearchPage(tuple(modules), int(rows[0].total), True)
            probe = None if count_limit is None else count_limit + 1
            total = self._count(conn, self._counted(stmt, terms), probe)
            exact = probe is None or total < probe
            if not exact:
                total = count_limit or 0
            if total == 0 or (exact and query.offset >= total):
                return SearchPage((), total, exact)
            scored = query.effective_sort == "relevance"
            paged = self._with_text(stmt, terms, scored=scored, page=True)
            score = paged.selected_columns.score if terms.tokens and scored else None
            ordered = paged.order_by(*self._order(query, score))
            ids = list(conn.scalars(ordered.limit(query.limit).offset(query.offset)))
            return SearchPage(tuple(self._load(conn, ids)), total, exact)

    def compatible_with(
        self, repo_id: str, source: str | None = None, *, limit: int | None = None
    ) -> list[Compatibility]:
        """Modules with the same normalised base model and target set; equal ranks first."""
        with self.engine.connect() as conn:
            ref_id = self._resolve_id(conn, repo_id, source)
            ref = conn.execute(
                sa.select(_modules.c.base_model_key, _modules.c.target_key, _modules.c.rank,
                          _modules.c.use_dora)
                .where(_modules.c.id == ref_id)
            ).one()
            same_rank = sa.case((_modules.c.rank == ref.rank, 0), else_=1)
            stmt = (
                sa.select(_modules.c.id)
                .where(
                    _modules.c.base_model_key == ref.base_model_key,
                    _modules.c.target_key == ref.target_key,
                    # A DoRA module is another method: never offered for a LoRA, nor back.
                    _modules.c.use_dora == ref.use_dora,
                    _modules.c.id != ref_id,
                )
                .order_by(same_rank, _modules.c.downloads.desc(), _modules.c.id)
            )
            if limit is not None:
                stmt = stmt.limit(limit)
            modules = self._load(conn, list(conn.scalars(stmt)))
        return [
            Compatibility(module=m, reference_repo_id=repo_id, rank_matches=m.rank == ref.rank)
            for m in modules
        ]

    # ------------------------------------------------------------------ pools and keys

    def matching_keys(self, query: SearchQuery) -> list[tuple[str, str]]:
        """(source, repo_id) of every module matching ``query``'s filters, unordered and
        unpaged: the pool a retrieval ranks, without loading a module."""
        m = _modules.c
        with self.engine.connect() as conn:
            stmt, terms = self._filtered(conn, query)
            ids = self._counted(stmt, terms).subquery()
            rows = conn.execute(sa.select(m.source, m.repo_id)
                                .where(m.id.in_(sa.select(ids.c[0])))).all()
        return [(source, repo_id) for source, repo_id in rows]

    def modules_by_keys(self, keys: Sequence[tuple[str, str]]) -> list[Module]:
        """Full modules for (source, repo_id) keys, in that order (unknown keys skipped)."""
        with self.engine.connect() as conn:
            found = dict(self._existing_keys(conn, keys))
            return self._load(conn, [found[k] for k in keys if k in found])


def _json_or_none(value: dict[str, Any] | list[Any]) -> str | None:
    """JSON text for a pattern or list column; None when empty (most modules)."""
    return json.dumps(value, sort_keys=True) if value else None
