"""The study's statistics and table formatting (no torch, no models).

A study compares systems (zero-shot, in-context, single modules, compositions) on the same test
examples. Everything here works on plain per-example data, so it can be checked by hand:

- :func:`majority_label` / :func:`majority_correct`: the rate of the commonest target label on
  the test split (what a constant answer scores) and that constant answer as a paired system;
- ``label_distribution`` (``composer.metrics``, re-exported): how often each label was
  predicted (a collapse shows at once);
- :func:`mcnemar_exact`: the exact two-sided McNemar test, a binomial test on the discordant pairs;
- :func:`paired_bootstrap`: a paired bootstrap of the difference of two accuracies;
- :func:`summarize`: mean and spread over seeds; :func:`markdown_table`: a table for BENCHMARKS.md.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from composer.metrics import label_distribution, majority

__all__ = ["label_distribution"]  # the one implementation, used by the study through here


def majority_label(targets: Sequence[str]) -> tuple[str, float]:
    """The commonest target label and its rate (ties broken by the label's sort order):
    ``composer.metrics.majority``, refusing an empty list."""
    label, rate = majority(targets)
    if label is None:
        raise ValueError("majority_label needs at least one target")
    return label, rate


def majority_correct(targets: Sequence[str]) -> list[bool]:
    """Per-example correctness of always answering the majority label (a paired baseline)."""
    label, _ = majority_label(targets)
    return [t == label for t in targets]


def format_distribution(counts: dict[str, int], top: int = 3) -> str:
    """``No 98% · Yes 2%``: the ``top`` commonest labels as shares of the total."""
    total = sum(counts.values())
    if not total:
        return "-"
    parts = [f"{label} {100 * n / total:.0f}%" for label, n in list(counts.items())[:top]]
    if len(counts) > top:
        parts.append(f"+{len(counts) - top} more")
    return " · ".join(parts)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two paired systems."""

    only_a: int  # pairs system A got right and B got wrong
    only_b: int  # pairs B got right and A got wrong
    p_value: float


def _check_paired(a: Sequence[bool], b: Sequence[bool]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired results differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("paired test needs at least one example")


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemarResult:
    """Exact two-sided McNemar test: ``min(1, 2 P[X <= min(n01, n10)])``, X ~ Bin(n01 + n10, 1/2).

    Only the discordant pairs carry information; with none, the p-value is 1.
    """
    _check_paired(a, b)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return McNemarResult(only_a, only_b, 1.0)
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return McNemarResult(only_a, only_b, min(1.0, 2.0 * tail))


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``accuracy(A) - accuracy(B)``."""

    difference: float  # on the real sample
    low: float  # percentile interval
    high: float
    p_value: float  # two-sided: 2 * min(P[d* <= 0], P[d* >= 0]), capped at 1
    resamples: int


def paired_bootstrap(
    a: Sequence[bool],
    b: Sequence[bool],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Resample examples with replacement (the same indices for both systems)."""
    _check_paired(a, b)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    stats = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2.0
    low = stats[max(0, math.floor(alpha * resamples))]
    high = stats[min(resamples - 1, math.ceil((1.0 - alpha) * resamples) - 1)]
    at_most = sum(1 for s in stats if s <= 0) / resamples
    at_least = sum(1 for s in stats if s >= 0) / resamples
    return BootstrapResult(
        difference=sum(diffs) / n,
        low=low,
        high=high,
        p_value=min(1.0, 2.0 * min(at_most, at_least)),
        resamples=resamples,
    )


@dataclass(frozen=True)
class Spread:
    """Mean and spread of one figure over seeds."""

    mean: float
    std: float  # sample standard deviation (0 for a single seed)
    low: float
    high: float
    n: int

    def format(self, digits: int = 2) -> str:
        """``0.54 ± 0.03`` (or just the value for one seed)."""
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarize(values: Sequence[float]) -> Spread:
    """Mean, sample standard deviation, min and max of ``values``."""
    if not values:
        raise ValueError("summarize needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(statistics.fmean(values), std, min(values), max(values), len(values))


def format_p(p: float) -> str:
    """A p-value for a table: three decimals, or ``<0.001``."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; every row must have one cell per header."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells, header has {len(header)}: {row}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
