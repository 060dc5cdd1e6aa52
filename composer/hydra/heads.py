"""Choose the number of Hydra heads from the training inputs, as the HydraLoRA paper describes.

TF-IDF features of the inputs, k-means for every k in a range, and the elbow of the inertia
curve: the k whose point lies farthest below the chord from the first to the last point
(the "kneedle" rule on the curve normalised to the unit square). numpy only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from loradex.errors import InvalidDataFile

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class HeadCountChoice:
    """The chosen N and the evidence: the k range, the inertia per k, the elbow distances."""

    chosen: int = field(metadata={"help": "the number of heads picked"})
    k: tuple[int, ...] = field(metadata={"help": "the k values tried"})
    inertia: tuple[float, ...] = field(metadata={"help": "k-means inertia for each k"})
    elbow_distance: tuple[float, ...] = field(
        metadata={"help": "normalised distance of each point below the chord"}
    )
    num_texts: int = field(metadata={"help": "how many inputs were clustered"})
    vocabulary_size: int = field(metadata={"help": "TF-IDF vocabulary size"})
    num_inputs: int = field(default=0, metadata={"help": "inputs given (before subsampling)"})

    def to_json_dict(self) -> dict[str, object]:
        """The ``head_selection`` record stored in ``hydra_config.json`` and the model card."""
        return {
            "method": "auto",
            "chosen": self.chosen,
            "features": "tfidf (word unigrams, sublinear tf, smoothed idf, l2)",
            "clustering": "k-means (k-means++ init, best of several runs)",
            "rule": "elbow: max distance below the chord of the normalised inertia curve",
            "k": list(self.k),
            "inertia": [round(v, 6) for v in self.inertia],
            "elbow_distance": [round(v, 6) for v in self.elbow_distance],
            "num_texts": self.num_texts,
            "num_inputs": self.num_inputs,
            "vocabulary_size": self.vocabulary_size,
        }


def tfidf_matrix(texts: Sequence[str], max_features: int = 5000) -> np.ndarray:
    """Rows of l2-normalised TF-IDF (smoothed idf, sublinear tf) over lower-cased words."""
    docs = []
    for text in texts:
        words = _TOKEN.findall(text.lower())
        docs.append(Counter(words))
    document_frequency: Counter[str] = Counter()
    for doc in docs:
        document_frequency.update(doc.keys())
    # Keep the most frequent terms (ties broken by name, so the result is deterministic).
    vocabulary = sorted(document_frequency, key=lambda t: (-document_frequency[t], t))
    index = {term: i for i, term in enumerate(vocabulary[:max_features])}
    n = len(docs)
    idf = np.zeros(len(index))
    for term, i in index.items():
        idf[i] = math.log((1 + n) / (1 + document_frequency[term])) + 1.0
    matrix = np.zeros((n, len(index)))
    for row, doc in enumerate(docs):
        for term, count in doc.items():
            column = index.get(term)
            if column is not None:
                matrix[row, column] = (1.0 + math.log(count)) * idf[column]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def kmeans(
    points: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 100
) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding, best of ``n_init`` runs: (labels, inertia)."""
    rng = np.random.default_rng(seed)
    best_labels = np.zeros(len(points), dtype=int)
    points = np.asarray(points)
    best_inertia = math.inf
    squared_norms = (points**2).sum(axis=1)
    for _ in range(n_init):
        centers = _kmeans_plus_plus(points, k, rng)
        labels = np.zeros(len(points), dtype=int)
        for iteration in range(max_iter):
            distances = (
                squared_norms[:, None] - 2 * points @ centers.T + (centers**2).sum(axis=1)[None]
            )
            new_labels = distances.argmin(axis=1)
            if iteration > 0 and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            # Cluster means as one matmul with the one-hot assignment matrix.
            onehot = np.zeros((len(points), k), dtype=points.dtype)
            onehot[np.arange(len(points)), labels] = 1
            counts = onehot.sum(axis=0)
            sums = onehot.T @ points
            for j in range(k):
                # An emptied cluster restarts at the point farthest from its center.
                if counts[j] > 0:
                    centers[j] = sums[j] / counts[j]
                else:
                    centers[j] = points[distances.min(axis=1).argmax()]
        inertia = float(((points - centers[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best_inertia, best_labels = inertia, labels.copy()
    return best_labels, max(best_inertia, 0.0)


def elbow(k_values: Sequence[int], inertia: Sequence[float]) -> tuple[int, list[float]]:
    """The k farthest below the chord of the curve normalised to [0, 1]²; and all distances."""
    x = np.asarray(k_values, dtype=float)
    y = np.asarray(inertia, dtype=float)
    if len(x) < 3 or y[0] - y[-1] <= 1e-12:
        return int(x[0]), [0.0] * len(x)
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y[-1]) / (y[0] - y[-1])
    # The chord runs from (0, 1) to (1, 0): distance below it is proportional to 1 - xn - yn.
    distances = (1.0 - xn - yn) / math.sqrt(2.0)
    return int(x[int(distances.argmax())]), [float(d) for d in distances]


def choose_num_heads(
    texts: Sequence[str], k_range: range = range(1, 9), *, seed: int = 0, max_texts: int = 1000
) -> HeadCountChoice:
    """Pick N for ``texts`` (the training inputs): TF-IDF, k-means for each k, elbow.

    The range is clipped to the number of distinct texts; one distinct text gives N = 1.
    More than ``max_texts`` inputs are subsampled (seeded) before clustering: the elbow
    depends on how many groups there are, not on every member, and k-means time grows with
    the number of points.
    """
    if not texts:
        raise InvalidDataFile("cannot choose a head count: no training inputs")
    num_inputs = len(texts)
    if len(texts) > max_texts:
        picked = np.random.default_rng(seed).choice(len(texts), size=max_texts, replace=False)
        texts = [texts[i] for i in sorted(picked)]
    # float32 halves the time of the distance matmuls; inertia differences stay far above it.
    features = tfidf_matrix(texts, max_features=2000).astype(np.float32)
    distinct = len({tuple(row) for row in np.round(features, 9)})
    k_values = [k for k in k_range if 1 <= k <= distinct]
    if not k_values:
        k_values = [1]
    inertia = [kmeans(features, k, seed=seed)[1] for k in k_values]
    chosen, distances = elbow(k_values, inertia)
    return HeadCountChoice(
        chosen=chosen,
        k=tuple(k_values),
        inertia=tuple(inertia),
        elbow_distance=tuple(distances),
        num_texts=len(texts),
        num_inputs=num_inputs,
        vocabulary_size=features.shape[1],
    )


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [points[rng.integers(len(points))]]
    closest = ((points - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            pick = int(rng.integers(len(points)))
        else:
            pick = int(rng.choice(len(points), p=closest / total))
        centers.append(points[pick])
        closest = np.minimum(closest, ((points - points[pick]) ** 2).sum(axis=1))
    return np.array(centers, dtype=points.dtype)
