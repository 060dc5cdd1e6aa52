"""Auto head count: TF-IDF + k-means + elbow picks the number of clear topics."""

from __future__ import annotations

import random

import numpy as np
import pytest

from composer.hydra.heads import choose_num_heads, elbow, kmeans, tfidf_matrix
from loradex.errors import InvalidDataFile

TOPICS = [
    "bake oven flour sugar butter whisk dough recipe boil simmer pan salt pepper garlic onion",
    "planet orbit galaxy telescope star comet nebula gravity moon solar eclipse asteroid cosmic",
    "stock bond dividend market interest rate loan equity portfolio asset inflation bank credit",
    "goal match striker referee league season coach penalty stadium team score tackle keeper",
    "chord melody guitar piano rhythm tempo song lyric album drum bass harmony concert singer",
]
_COMMON_TEXT = "the of and to in is what how please explain"
COMMON = _COMMON_TEXT.split()


def clustered_texts(n_topics: int, per_topic: int = 30, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [
        " ".join(rng.sample(TOPICS[t].split(), 6) + rng.sample(COMMON, 3))
        for t in range(n_topics)
        for _ in range(per_topic)
    ]
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("n_topics", [2, 3, 4, 5])
def test_auto_picks_the_number_of_topics(n_topics: int) -> None:
    choice = choose_num_heads(clustered_texts(n_topics, seed=n_topics), range(1, 9))
    assert choice.chosen == n_topics
    assert choice.k == tuple(range(1, 9))
    assert list(choice.inertia) == sorted(choice.inertia, reverse=True)
    record = choice.to_json_dict()
    assert record["method"] == "auto" and record["chosen"] == n_topics
    assert len(record["inertia"]) == 8


def test_range_is_clipped_to_distinct_inputs() -> None:
    choice = choose_num_heads(["same text"] * 5 + ["other words"] * 5, range(1, 9))
    assert choice.k == (1, 2)
    assert choose_num_heads(["only one"] * 4).chosen == 1


def test_no_inputs_is_refused() -> None:
    with pytest.raises(InvalidDataFile, match="no training inputs"):
        choose_num_heads([])


def test_tfidf_rows_are_unit_length() -> None:
    matrix = tfidf_matrix(["a cat sat", "the cat and the dog", "dog dog dog"])
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0)


def test_kmeans_separates_obvious_clusters() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(c, 0.05, size=(20, 2)) for c in (0.0, 5.0, 10.0)])
    labels, inertia = kmeans(points, 3)
    assert len(set(labels[:20])) == len(set(labels[20:40])) == len(set(labels[40:])) == 1
    assert len(set(labels)) == 3
    assert inertia < 1.0


def test_elbow_of_a_known_curve() -> None:
    assert elbow([1, 2, 3, 4, 5, 6], [100, 50, 10, 9, 8, 7])[0] == 3
    assert elbow([1, 2], [10, 1])[0] == 1
