"""Find the modules that fit a task: rank modules by their signatures against a few examples.

A query is a handful of task inputs; its vector is the normalised mean of their embeddings.
Each module is scored by the cosine between that vector and the centroid of its signature:
its **data** signature when it has one (embeddings of its training inputs, the closest
thing to "the same kind of input"), else its **card** signature. Only vectors made by the
query's embedder are compared. The index holds one float32 centroid a module, loaded once
from the registry: 100,000 modules are 150 MB and a query is one matrix-vector product.

Modules of the pool with no signature from this embedder (a registry indexed before
signatures existed, or by another embedder) get a card signature computed on the spot, up
to ``ON_THE_FLY_LIMIT`` of them, and are reported as such; ``loradex db sign`` stores them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loradex.errors import ConfigError
from registry.signatures import CARD, DATA, card_signatures

if TYPE_CHECKING:
    import numpy as np

    from registry.embedders import Embedder
    from registry.store import RegistryStore

# Modules without a stored signature embedded per query, at most (about 20 ms each).
ON_THE_FLY_LIMIT = 5000
# Each kind needs this many modules in a pool before scores are standardised per kind.
MIN_KIND_FOR_Z = 5
ModuleKey = tuple[str, str]


@dataclass(frozen=True)
class RetrievalHit:
    """One module's fit to the query: cosine score and which signature gave it."""

    source: str = field(metadata={"help": "where the module was indexed from"})
    repo_id: str = field(metadata={"help": "the module's repo id"})
    score: float = field(metadata={"help": "cosine of query and signature centroids, -1..1"})
    signature: str = field(metadata={"help": "'data', 'card', or 'card (computed now)'"})

    @property
    def key(self) -> ModuleKey:
        """(source, repo_id), the module's identity in the registry."""
        return (self.source, self.repo_id)


class SignatureIndex:
    """Centroids of one embedder's signatures, in memory, ranked by cosine to a query."""

    def __init__(self, embedder: str, keys: Sequence[ModuleKey], kinds: Sequence[str],
                 centroids: np.ndarray) -> None:
        import numpy as np

        if len(keys) != len(kinds) or len(keys) != len(centroids):
            raise ValueError("keys, kinds and centroids must have the same length")
        self.embedder = embedder
        self.keys = list(keys)
        self.kinds = list(kinds)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._row = {key: i for i, key in enumerate(self.keys)}

    @classmethod
    def from_store(cls, store: RegistryStore, embedder: str) -> SignatureIndex:
        """Load every centroid ``embedder`` made from the registry."""
        import numpy as np

        rows = store.signature_rows(embedder)
        centroids = (np.frombuffer(rows.centroids, dtype="<f2")
                     .reshape(len(rows.keys), rows.dim).astype(np.float32)
                     if rows.keys else np.zeros((0, 0), dtype=np.float32))
        return cls(embedder, rows.keys, rows.kinds, centroids)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    @property
    def nbytes(self) -> int:
        """Memory held by the centroid matrix."""
        return int(self.centroids.nbytes)

    def rows(self, keys: Collection[ModuleKey]) -> np.ndarray:
        """Row numbers of the ``keys`` this index holds (keys it lacks are left out): work
        done once per pool, so repeated queries over one pool skip it."""
        import numpy as np

        return np.fromiter((self._row[k] for k in keys if k in self._row), dtype=np.int64)

    def rank(self, query: np.ndarray, *, among: Collection[ModuleKey] | None = None,
             rows: np.ndarray | None = None, limit: int | None = None) -> list[RetrievalHit]:
        """Modules by decreasing cosine to ``query`` (a vector or a set of example vectors),
        only those in ``among`` (keys) or ``rows`` (from :meth:`rows`) when given."""
        import numpy as np

        if not self.keys:
            return []
        vector = _query_vector(query)
        if vector.shape[0] != self.centroids.shape[1]:
            raise ConfigError(f"query vectors have width {vector.shape[0]}, the index "
                              f"{self.centroids.shape[1]}: made by different embedders")
        if rows is None:
            rows = np.arange(len(self.keys)) if among is None else self.rows(among)
        if rows.size == 0:
            return []
        # One product over the whole matrix, then a gather: cheaper than gathering rows first.
        scores = (self.centroids @ vector)[rows]
        order = self._calibrated(scores, rows)
        n = rows.size if limit is None else min(limit, rows.size)
        top = np.argpartition(-order, n - 1)[:n] if n < rows.size else np.arange(rows.size)
        top = top[np.lexsort((top, -order[top]))]
        return [RetrievalHit(source=self.keys[rows[i]][0], repo_id=self.keys[rows[i]][1],
                             score=float(scores[i]), signature=self.kinds[rows[i]])
                for i in top]


    def _calibrated(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """What the ranking sorts on: the cosine, or, when the pool mixes data and card
        signatures (each with at least ``MIN_KIND_FOR_Z`` modules), the cosine standardised
        within its kind: a query and training inputs are far closer than a query and a card,
        so raw cosines would rank every data-signed module above every card-signed one."""
        import numpy as np

        is_data = np.fromiter((self.kinds[r] == DATA for r in rows), dtype=bool, count=rows.size)
        n_data = int(is_data.sum())
        if min(n_data, rows.size - n_data) < MIN_KIND_FOR_Z:
            return scores
        out = np.empty_like(scores)
        for mask in (is_data, ~is_data):
            group = scores[mask]
            out[mask] = (group - group.mean()) / max(float(group.std()), 1e-6)
        return out


def _query_vector(query: np.ndarray) -> np.ndarray:
    import numpy as np

    array = np.asarray(query, dtype=np.float32)
    mean = array.mean(0) if array.ndim == 2 else array
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def retrieve(store: RegistryStore, embedder: Embedder, examples: Sequence[str],
             pool: Sequence[ModuleKey], *, limit: int | None = None,
             index: SignatureIndex | None = None) -> list[RetrievalHit]:
    """The modules of ``pool`` ((source, repo_id) keys) ranked by fit to the example inputs.

    Pool modules without a signature from ``embedder`` are scored on a card signature made
    now (at most ``ON_THE_FLY_LIMIT``; more is a ConfigError asking for ``loradex db sign``).
    """
    texts = [t for t in examples if t.strip()]
    if not texts:
        raise ConfigError("no example inputs to retrieve modules for")
    index = index if index is not None else SignatureIndex.from_store(store, embedder.name)
    query = embedder.embed(texts)
    unsigned = [key for key in pool if key not in index]
    if len(unsigned) > ON_THE_FLY_LIMIT:
        raise ConfigError(
            f"{len(unsigned)} modules have no signature from {embedder.name}; "
            "run `loradex db sign` to make them once")
    modules = store.modules_by_keys(unsigned) if unsigned else []
    if modules:
        import numpy as np

        signatures = card_signatures(embedder, modules)
        extra = np.stack([s.centroid() for s in signatures])
        index = SignatureIndex(
            embedder.name, [*index.keys, *((m.source, m.repo_id) for m in modules)],
            [*index.kinds, *[f"{CARD} (computed now)"] * len(modules)],
            np.concatenate([index.centroids.reshape(-1, extra.shape[1]), extra]))
    return index.rank(query, among=pool, limit=limit)
