"""The BIG-Bench Hard study as a package (``benchmarks/bbh_study.py`` is its script; the
protocol and options are in :mod:`benchmarks.study.cli`).

- :mod:`~benchmarks.study.settings`: the settings a results file is made with, row names,
  compose specs;
- :mod:`~benchmarks.study.inputs`: task files, the library pool, seeded splits and candidates;
- :mod:`~benchmarks.study.results`: the results file: format, resuming, ``--merge``,
  ``--extend-from``;
- :mod:`~benchmarks.study.scoring`: a row's per-example scores and metrics;
- :mod:`~benchmarks.study.runner`: :class:`Study`, the resumable runner;
- :mod:`~benchmarks.study.units`: its (task, seed) cells as units on a Ray cluster (``--ray``);
- :mod:`~benchmarks.study.stats`: McNemar, the paired bootstrap, spreads (no torch);
- :mod:`~benchmarks.study.report`: the Markdown tables;
- :mod:`~benchmarks.study.cli`: the command line (:func:`main`).
"""

from benchmarks.study.cli import main, parse_args
from benchmarks.study.inputs import library_pool, pick_candidates, split_task, task_files
from benchmarks.study.report import format_p_values, own_share, report, row_seconds, task_table
from benchmarks.study.results import read_results_file
from benchmarks.study.runner import Study
from benchmarks.study.scoring import score_test
from benchmarks.study.settings import ComposeSpec, StudySettings, applies

__all__ = [
    "ComposeSpec",
    "Study",
    "StudySettings",
    "applies",
    "format_p_values",
    "library_pool",
    "main",
    "own_share",
    "parse_args",
    "pick_candidates",
    "read_results_file",
    "report",
    "row_seconds",
    "score_test",
    "split_task",
    "task_files",
    "task_table",
]
