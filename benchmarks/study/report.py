"""The report of a study: one Markdown table per task over its seeds, with the paired tests of
every system against zero-shot and the majority label, and the settings line above them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from benchmarks.study.settings import MAJORITY, SINGLE, ZERO_SHOT, module_id
from benchmarks.study.stats import (
    format_distribution,
    format_p,
    label_distribution,
    majority_correct,
    markdown_table,
    mcnemar_exact,
    paired_bootstrap,
    summarize,
)

SIGNIFICANT = 0.05  # the level at which the tables count a seed as a significant difference


def paired_tests(cell: dict[str, Any], name: str) -> dict[str, Any]:
    """McNemar and bootstrap of a system against zero-shot and the majority label, per metric."""
    system = cell["systems"][name]
    targets = cell["test_targets"]
    out: dict[str, Any] = {}
    metrics = [("mc", "mc_correct")] if cell["has_choices"] else []
    metrics.append(("em", "em_correct"))
    for metric, key in metrics:
        mine = [bool(x) for x in system[key]]
        against = {"majority": majority_correct(targets)}
        if name != ZERO_SHOT and ZERO_SHOT in cell["systems"]:
            against[ZERO_SHOT] = [bool(x) for x in cell["systems"][ZERO_SHOT][key]]
        for other, theirs in against.items():
            mc = mcnemar_exact(mine, theirs)
            boot = paired_bootstrap(mine, theirs, resamples=2000, seed=0)
            out[f"{metric} vs {other}"] = {
                "only_this": mc.only_a, "only_other": mc.only_b, "mcnemar_p": mc.p_value,
                "difference": boot.difference, "bootstrap_95": [boot.low, boot.high],
                "bootstrap_p": boot.p_value,
            }
    return out


def task_table(task: str, cells: dict[str, dict[str, Any]], systems: Sequence[str]) -> str:
    """The Markdown table of one task over its seeds (systems missing from a seed are skipped)."""
    seeds = sorted(cells, key=int)
    first = cells[seeds[0]]
    has_choices = first["has_choices"]
    metric = "mc" if has_choices else "em"
    majority = summarize([cells[s]["majority"]["rate"] for s in seeds])
    labels = sorted({cells[s]["majority"]["label"] for s in seeds})
    header = ["system", "exact match", "MC accuracy", "best seed (EM / MC)",
              "labels picked (MC)", "generated answers", "p vs zero-shot", "p vs majority"]
    rows = [[MAJORITY, majority.format(), majority.format() if has_choices else "-",
             f"{majority.high:.2f}", f"{'/'.join(labels)} 100%", "-", "-", "-"]]
    for name in systems:
        done = [s for s in seeds if name in cells[s].get("systems", {})]
        if not done:
            continue
        res = [cells[s]["systems"][name] for s in done]
        em = summarize([r["exact_match"] for r in res])
        mc = summarize([r["choice_accuracy"] for r in res]) if has_choices else None
        best = max(res, key=lambda r: (r.get("choice_accuracy") or 0.0, r["exact_match"]))
        best_txt = f"{best['exact_match']:.2f} / " + (
            f"{best['choice_accuracy']:.2f}" if has_choices else "-")
        picked = _pooled([r.get("mc_labels", {}) for r in res])
        generated = _pooled([label_distribution(_short(a) for a in r["answers"]) for r in res])
        tests = [paired_tests(cells[s], name) for s in done]
        vs_zero = ("-" if name == ZERO_SHOT
                   else format_p_values([t[f"{metric} vs {ZERO_SHOT}"] for t in tests
                                   if f"{metric} vs {ZERO_SHOT}" in t]))
        vs_major = format_p_values([t[f"{metric} vs majority"] for t in tests])
        rows.append([name, em.format(), mc.format() if mc else "-", best_txt,
                     format_distribution(picked) if picked else "-",
                     format_distribution(generated, top=2), vs_zero or "-", vs_major])
    n_test = sorted({cells[s]["n_test"] for s in seeds})
    head = (f"**{task}** — {len(seeds)} seed(s) ({', '.join(seeds)}), "
            f"{'/'.join(map(str, n_test))} test examples per seed, "
            f"{len(first['candidates'])} candidates; p-values: exact McNemar on "
            f"{'multiple-choice' if has_choices else 'exact-match'} correctness, one per seed; "
            f"↑N/↓N: seeds where the system is significantly (p < {SIGNIFICANT}) better/worse")
    table = head + "\n\n" + markdown_table(header, rows)
    cut = {name: sum(c["systems"][name].get("prompts_cut", 0) for c in cells.values()
                     if name in c.get("systems", {})) for name in systems}
    if any(cut.values()):
        table += ("\n\nPrompts that lost their beginning (over the length limit), over all "
                  "seeds: " + ", ".join(f"{name} {n}" for name, n in cut.items() if n) + ".")
    own = own_module_line(task, cells, systems)
    if own:
        table += "\n\n" + own
    return table


def own_share(weights: Sequence[float], candidates: Sequence[str], own: str) -> float:
    """The task's own module's share of the absolute weight of a compose row (weights laid
    out ``[layer groups, candidates]``, summed over the groups)."""
    k = len(candidates)
    absolute = [abs(w) for w in weights]
    total = sum(absolute)
    mine = sum(absolute[candidates.index(own)::k])
    return mine / total if total else 0.0


def own_module_line(task: str, cells: dict[str, dict[str, Any]], systems: Sequence[str]) -> str:
    """Where the task's own library module was a candidate: how often the few-shot loss picked
    it as the single module, and its share of each compose row's weight (mean over seeds)."""
    seeds = [s for s in sorted(cells, key=int) if task in cells[s]["candidates"]]
    if not seeds:
        return ""
    parts = []
    picked = [cells[s]["systems"][SINGLE]["module"] == module_id(task)
              for s in seeds if SINGLE in cells[s]["systems"]]
    if picked:
        parts.append(f"the single row picked it in {sum(picked)} of {len(picked)} seed(s)")
    k = len(cells[seeds[0]]["candidates"])
    for name in systems:
        if not name.startswith("compose "):
            continue
        shares = [own_share(cells[s]["systems"][name]["weights"], cells[s]["candidates"], task)
                  for s in seeds if name in cells[s]["systems"]]
        if shares:
            parts.append(f"{name} gave it {summarize(shares).format()} of the weight")
    return (f"The task's own module `{task}` was a candidate in {len(seeds)} seed(s) (an even "
            f"share would be {1 / k:.2f}): " + "; ".join(parts) + ".")


def format_p_values(tests: Sequence[dict[str, Any]]) -> str:
    """Per-seed McNemar p-values, then how many seeds are significantly better and worse."""
    if not tests:
        return ""
    ps = "/".join(format_p(t["mcnemar_p"]) for t in tests)
    better = sum(t["mcnemar_p"] < SIGNIFICANT and t["only_this"] > t["only_other"] for t in tests)
    worse = sum(t["mcnemar_p"] < SIGNIFICANT and t["only_this"] < t["only_other"] for t in tests)
    return f"{ps} (↑{better} ↓{worse})"


def _short(answer: str, width: int = 14) -> str:
    """A generated answer for a table cell: quoted, cut to ``width`` characters."""
    text = answer if len(answer) <= width else answer[: width - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _pooled(distributions: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in distributions:
        for label, n in d.items():
            total[label] = total.get(label, 0) + n
    return label_distribution(label for label, n in total.items() for _ in range(n))


def row_seconds(results: dict[str, Any]) -> float:
    """The time spent computing every row of a results file, whichever process computed it
    (rows copied from another study with ``--baselines-from`` are not counted)."""
    return sum(
        system.get("seconds", 0.0)
        for cells in results["tasks"].values()
        for cell in cells.values()
        for system in cell.get("systems", {}).values()
        if "copied_from" not in system
    )


def report(results: dict[str, Any], systems: Sequence[str]) -> str:
    """All task tables of a results file, with the settings and wall time."""
    fp = results["settings"]["fingerprint"]
    parts = [
        f"Settings: k = {fp['k']} candidates, {fp['shots']} few-shot examples, budget "
        f"{fp['budget']}, test limit {fp['test_limit'] or 'none'}, chat template "
        f"{fp['use_chat_template']}, dtype {fp['dtype']}, prompts cut to their last "
        f"{fp['max_length']} tokens; library pool of "
        f"{len(results['settings']['library_pool'])} modules; time spent on the rows "
        f"{row_seconds(results) / 60:.1f} min (the sum of every row's own time"
        + (f", rows from {len(results['merged'])} process(es) run side by side merged in"
           if results.get("merged") else "")
        + ").",
    ]
    for task, cells in results["tasks"].items():
        # A cell with only copied baselines has no candidates yet: not started here.
        done = {s: c for s, c in cells.items() if c.get("systems") and "candidates" in c}
        if done:
            parts.append(task_table(task, done, systems))
    return "\n\n".join(parts)
