"""The resumable runner: computes every missing (task, seed, system) cell of a study and saves
the results file after each row, so a stopped run resumes where it was."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.study.inputs import pick_candidates, split_task
from benchmarks.study.results import (
    adopt_prior,
    merge_results,
    open_baselines,
    open_prior,
    open_results,
    prior_cell,
    save_results,
    take_baselines,
)
from benchmarks.study.scoring import PER_EXAMPLE, cell_metrics, extended_row, score_test
from benchmarks.study.settings import (
    IN_CONTEXT,
    ORACLE,
    OWN,
    SINGLE,
    UNIFORM,
    ZERO_SHOT,
    ComposeSpec,
    StudySettings,
    applies,
    hydra_module_system,
    hydra_system,
    module_id,
)
from benchmarks.study.stats import majority_label
from loradex.errors import ModuleNotFound

if TYPE_CHECKING:
    from composer.candidates import Candidate
    from composer.data import Example
    from composer.hydra.format import HydraModule
    from composer.models import LoadedModel
    from registry.embedders import Embedder
    from registry.retrieval import SignatureIndex


class Study:
    """Runs the cells of a study and keeps the results file up to date.

    A Ray worker (:mod:`benchmarks.study.units`) makes one with ``out`` None and the
    ``results`` of the one cell it computes (nothing is saved there: the driver writes), its
    ``prior`` cell and the ``library_dir`` the modules were shipped to.
    """

    def __init__(
        self,
        settings: StudySettings,
        out: Path | None,
        *,
        compose: Sequence[ComposeSpec],
        oracle: bool,
        hydra_heads: int = 0,
        hydra_modules: Sequence[Path] = (),
        quiet: bool = False,
        extend_from: Path | None = None,
        results: dict[str, Any] | None = None,
        prior: dict[str, Any] | None = None,
        library_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.out = out
        self.library_dir = library_dir or Path(settings.library)
        self.compose = list(compose)
        self.oracle = oracle
        self.hydra_heads = hydra_heads
        self.hydra_modules = {hydra_module_system(f): f for f in hydra_modules}
        self.quiet = quiet
        self.loaded: LoadedModel | None = None
        self._signatures: SignatureIndex | None = None  # the pool's, built on first use
        self._embedder: Embedder
        self.computed: list[tuple[str, int, str]] = []
        if results is not None:  # a worker's one cell
            self.prior, self.results = prior, results
            return
        assert out is not None
        self.prior = open_prior(extend_from, settings) if extend_from else None
        self.results = open_results(out, settings)
        if self.prior is not None:
            adopt_prior(self.results, self.prior)

    def merge(self, other_path: Path) -> int:
        """Take the rows another results file of the same settings has and this one lacks.

        Lets two processes run disjoint tasks or seeds, each with its own ``--out``, and be
        joined after. Returns the number of rows taken.
        """
        taken = merge_results(self.results, other_path)
        self.save()
        return taken

    def adopt_baselines(self, path: Path, tasks: dict[str, Path], seeds: Sequence[int],
                        ) -> tuple[int, int]:
        """Copy the zero-shot and in-context rows of these cells from another study of the
        same splits (``--baselines-from``); (rows copied, cells whose split differs there)."""
        from composer.data import load_examples

        other = open_baselines(path, self.settings)
        source = str(path.resolve())
        taken = mismatched = 0
        for task, file in tasks.items():
            if task not in other["tasks"]:
                continue
            examples = load_examples(file, min_examples=self.settings.shots + 1)
            for seed in seeds:
                few_idx, test_idx = split_task(examples, self.settings.shots, seed,
                                               self.settings.test_limit)
                got = take_baselines(self.results, other, source, task, seed, few_idx,
                                     [examples[i].target for i in test_idx])
                if got is None:
                    mismatched += 1
                else:
                    taken += got
        self.save()
        return taken, mismatched

    def save(self) -> None:
        """Write the results file atomically (a crash never leaves half a file); a worker
        writes nothing."""
        if self.out is not None:
            save_results(self.out, self.results)

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def _model(self) -> LoadedModel:
        if self.loaded is None:
            from composer.models import ModelSpec, load_base_model

            self._say(f"loading base model {self.settings.base_model or '(embedded SmolLM2)'} ...")
            self.loaded = load_base_model(ModelSpec(
                name_or_path=self.settings.base_model, device="cpu", dtype=self.settings.dtype,
            ))
        return self.loaded

    def systems(self) -> list[str]:
        """The systems every cell computes, in order."""
        # In-context prompts are ~6x longer than the others: computed last, so a stopped run
        # has the module rows of as many cells as possible.
        names = [ZERO_SHOT, SINGLE]
        if self.oracle:
            names.append(ORACLE)
        if self.settings.own_module == "include":
            names.append(OWN)
        names.append(UNIFORM)
        names += [spec.name for spec in self.compose]
        source = next((spec.name for spec in self.compose
                       if spec.method == "lorahub" and spec.layer_groups == 1), None)
        if self.hydra_heads and source:
            names.append(hydra_system(source))
        names += list(self.hydra_modules)
        return [*names, IN_CONTEXT]

    def run(self, tasks: dict[str, Path], seeds: Sequence[int]) -> None:
        """Compute every missing (task, seed, system), saving after each one."""
        from composer.data import load_examples

        examples = {task: load_examples(path, min_examples=self.settings.shots + 1)
                    for task, path in tasks.items()}
        # Seeds outside: a run stopped early still covers every task.
        for seed in seeds:
            for task in tasks:
                started = time.perf_counter()
                try:
                    self._run_cell(task, examples[task], seed)
                finally:
                    self.results["wall_seconds"] += time.perf_counter() - started
                    self.save()

    def missing(self, task: str, examples: Sequence[Example], seed: int) -> list[str]:
        """The systems of the (task, seed) cell not in the results yet."""
        cell = self.results["tasks"].get(task, {}).get(str(seed), {})
        with_choices = all(ex.choices for ex in examples)
        return [name for name in self.systems()
                if name not in cell.get("systems", {}) and applies(name, with_choices)]

    def _run_cell(self, task: str, examples: list[Example], seed: int) -> None:
        s = self.settings
        todo = self.missing(task, examples, seed)
        cell = self.results["tasks"].setdefault(task, {}).setdefault(str(seed), {})
        if not todo:
            self._say(f"[{task} seed {seed}] done already, skipped")
            return
        few_idx, test_idx = split_task(examples, s.shots, seed, s.test_limit)
        pool = self.results["settings"]["library_pool"]
        few = [examples[i] for i in few_idx]
        if s.select == "random":
            names = pick_candidates(pool, s.k, seed, task, s.own_module)
        elif "selection" in cell:  # chosen before this run stopped: keep the same ones
            names = list(cell["candidates"])
        else:
            names, cell["selection"] = self._select(task, pool, few)
        test = [examples[i] for i in test_idx]
        targets = [ex.target for ex in test]
        has_choices = all(ex.choices for ex in test)
        label, rate = majority_label(targets)
        cell.update({
            "few_shot_indices": few_idx,
            "n_test": len(test),
            "test_targets": targets,
            "has_choices": has_choices,
            "majority": {"label": label, "rate": rate},
            "candidates": names,
        })
        systems = cell.setdefault("systems", {})
        prior = prior_cell(self.prior, task, seed, few_idx, names, targets)
        loaded = self._model()
        candidates = [self._candidate(n) for n in names]

        def record(name: str, result: dict[str, Any], started: float) -> None:
            result["seconds"] = round(time.perf_counter() - started, 2)
            cell_metrics(result, targets, has_choices)
            systems[name] = result
            self.computed.append((task, seed, name))
            mc = result.get("choice_accuracy")
            cut = result.get("prompts_cut")
            self._say(
                f"[{task} seed {seed}] {name}: exact match {result['exact_match']:.3f}"
                + (f", choice accuracy {mc:.3f}" if mc is not None else "")
                + f" ({result['seconds']:.0f} s)"
                + (f"; {cut} prompts over --max-length {s.max_length} tokens lost their "
                   "beginning" if cut else "")
            )
            self.save()

        for name in todo:
            t0 = time.perf_counter()
            old = prior["systems"].get(name) if prior else None
            if old is not None and name != ZERO_SHOT and name not in self.hydra_modules:
                rest = test[len(old["em_correct"]):]
                scored = self._rescore(name, old, seed, loaded, candidates, few, rest, systems)
                record(name, extended_row(old, scored), t0)
            elif name == ZERO_SHOT or name in self.hydra_modules:
                record(name, self._seed_free_system(name, task, examples, test_idx), t0)
            elif name == IN_CONTEXT:
                scored = self._score(loaded, test, demonstrations=few)
                record(name, scored, t0)
            elif name in (SINGLE, UNIFORM, ORACLE, OWN):
                record(name, self._lorahub_system(name, loaded, candidates, few, test, task), t0)
            elif name.startswith("hydra from "):
                source = "compose " + name.removeprefix("hydra from ")
                weights = systems[source]["weights"]
                record(name, self._hydra_compose_system(weights, seed, loaded, candidates, few,
                                                        test), t0)
            else:
                spec = ComposeSpec.parse(name)
                record(name, self._compose_system(spec, seed, loaded, candidates, few, test), t0)

    def _rescore(
        self,
        name: str,
        old: dict[str, Any],
        seed: int,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        rest: Sequence[Example],
        systems: dict[str, Any],
    ) -> dict[str, Any]:
        """Score ``rest`` with a prior row's system rebuilt from what the row recorded.

        No search runs again: compose and uniform rows keep their weights (as recorded, to 6
        decimals), the single module its module; a Hydra composition is rebuilt from its
        source row's weights with the same seed.
        """
        import numpy as np

        from composer.compose import ComposeSession
        from composer.methods import get_method

        if not rest:
            return {"answers": [], "em_correct": [], "mc_picks": []}
        if name == IN_CONTEXT:
            return self._score(loaded, rest, demonstrations=few)
        if name.startswith("hydra from "):
            source = systems["compose " + name.removeprefix("hydra from ")]["weights"]
            return self._hydra_compose_system(source, seed, loaded, candidates, few, rest)
        method, groups = "lorahub", 1
        if name in (SINGLE, ORACLE, OWN):
            ids = [c.repo_id for c in candidates]
            weights = np.eye(len(candidates))[ids.index(old["module"])]
        elif name == UNIFORM:
            weights = np.asarray(old["weights"], dtype=float)
        else:
            spec = ComposeSpec.parse(name)
            method, groups = spec.method, spec.layer_groups
            weights = np.asarray(old["weights"], dtype=float)
        with ComposeSession(loaded, candidates, get_method(method), layer_groups=groups) as session:
            session.set_weights(weights)
            return self._score(loaded, rest)

    def _seed_free_system(
        self, name: str, task: str, examples: Sequence[Example], test_idx: Sequence[int]
    ) -> dict[str, Any]:
        """A system that depends on no seed (zero-shot, a ready Hydra module), from its scores
        per example: each example is scored once for all seeds, and only the examples no
        earlier seed had are scored now. The seeds' test splits overlap, so this saves most
        of the work of these rows."""
        store = self.results.setdefault("per_example", {}).setdefault(task, {})
        scores = store.setdefault(name, {})
        extra: dict[str, Any] = {}
        module: HydraModule | None = None
        if name in self.hydra_modules:
            from composer.hydra.format import load_hydra

            module = load_hydra(self.hydra_modules[name])
            extra = {"heads": module.config.num_heads, "module": str(self.hydra_modules[name])}
        missing = [i for i in test_idx if str(i) not in scores]
        if missing:
            loaded = self._model()
            subset = [examples[i] for i in missing]
            if module is None:
                scored = self._score(loaded, subset)
            else:
                scored = self._score_with_hydra(loaded, module, subset)
            for j, i in enumerate(missing):
                scores[str(i)] = [scored[key][j] for key in PER_EXAMPLE]
        rows = [scores[str(i)] for i in test_idx]
        return {
            "answers": [r[0] for r in rows],
            "em_correct": [r[1] for r in rows],
            "mc_picks": [r[2] for r in rows],
            "newly_scored": len(missing),
            **extra,
        }

    def _select(self, task: str, pool: Sequence[str], few: Sequence[Example],
                ) -> tuple[list[str], dict[str, Any]]:
        """This cell's candidates by task signature (and screen), and what chose them."""
        from composer.selection import screen
        from registry.signatures import folder_signature

        s = self.settings
        pool = [n for n in pool if not (s.own_module == "exclude" and n == task)]
        if self._signatures is None:
            import numpy as np

            from registry.embedders import load_embedder
            from registry.retrieval import SignatureIndex

            self._embedder = load_embedder()
            centroids = []
            for name in pool:
                signature = folder_signature(self.library_dir / name)
                if signature is None or signature.embedder != self._embedder.name:
                    raise ModuleNotFound(f"{self.library_dir / name}: no data signature from "
                                         f"{self._embedder.name} (loradex library sign)")
                centroids.append(signature.centroid())
            self._signatures = SignatureIndex(self._embedder.name, [("", n) for n in pool],
                                              ["data"] * len(pool), np.stack(centroids))
        query = self._embedder.embed([ex.input for ex in few])
        m = s.k if s.select == "retrieve" else s.screen_pool
        hits = self._signatures.rank(query, among=[("", n) for n in pool], limit=m)
        retrieved = [h.repo_id for h in hits]
        selection: dict[str, Any] = {
            "method": s.select, "retrieved": [[h.repo_id, round(h.score, 6)] for h in hits]}
        if s.select == "retrieve":
            return retrieved, selection
        started = time.perf_counter()
        result = screen(self._model(), [self._candidate(n) for n in retrieved], few, s.k,
                        use_chat_template=s.use_chat_template)
        selection["screen_losses"] = {n: round(x, 6)
                                      for n, x in zip(retrieved, result.losses, strict=True)}
        selection["screen_seconds"] = round(time.perf_counter() - started, 2)
        return [retrieved[i] for i in result.kept], selection

    def _candidate(self, name: str) -> Candidate:
        from composer.candidates import read_candidate

        folder = self.library_dir / name
        if not (folder / "adapter_config.json").is_file():
            raise ModuleNotFound(
                f"{folder}: module {name} of this study's frozen pool is gone from --library"
            )
        return read_candidate(folder, repo_id=module_id(name))

    def _lorahub_system(
        self,
        name: str,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        test: Sequence[Example],
        task: str,
    ) -> dict[str, Any]:
        import numpy as np

        from composer.compose import ComposeSession
        from composer.methods import get_method
        from composer.objectives import get_objective

        chat = self.settings.use_chat_template
        k = len(candidates)
        with ComposeSession(loaded, candidates, get_method("lorahub")) as session:

            def alone(i: int) -> dict[str, Any]:
                """Candidate ``i`` alone (weight 1, the others 0), scored on the test split."""
                session.set_weights(np.eye(k)[i])
                return {**self._score(loaded, test), "module": candidates[i].repo_id}

            if name == UNIFORM:
                weights = np.full(k, 1.0 / k)
                session.set_weights(weights)
                scored = self._score(loaded, test)
                return {**scored, "weights": weights.tolist()}
            if name == SINGLE:
                objective = get_objective("lm")
                objective.prepare(loaded, few, use_chat_template=chat)
                losses = [float(session.losses(objective, np.eye(k)[i : i + 1])[0])
                          for i in range(k)]
                return {**alone(int(np.argmin(losses))),
                        "few_shot_losses": [round(x, 6) for x in losses]}
            if name == OWN:  # the module trained on this task: what composition could recover
                return alone([c.repo_id for c in candidates].index(module_id(task)))
            # ORACLE: the candidate with the best choice accuracy on the test split itself.
            rows = [alone(i) for i in range(k)]
            accuracies = [sum(p == ex.target for p, ex in zip(row["mc_picks"], test, strict=True))
                          for row in rows]
            return {**rows[int(np.argmax(accuracies))], "test_choice_correct": accuracies}

    def _compose_system(
        self,
        spec: ComposeSpec,
        seed: int,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        test: Sequence[Example],
    ) -> dict[str, Any]:
        from composer.compose import ComposeConfig, ComposeSession, compose
        from composer.methods import get_method
        from composer.search import SearchConfig

        config = ComposeConfig(
            method=spec.method, objective=spec.objective, layer_groups=spec.layer_groups,
            restarts=spec.restarts, start=spec.start, guard=spec.guard,
            search=SearchConfig(budget=self.settings.budget, seed=seed),
            use_chat_template=self.settings.use_chat_template,
        )
        result = compose(loaded, candidates, few, config, progress=False)
        with ComposeSession(loaded, candidates, get_method(spec.method),
                            layer_groups=spec.layer_groups) as session:
            session.set_weights(result.weights)
            scored = self._score(loaded, test)
        out = {
            **scored,
            "weights": [round(float(w), 6) for w in result.weights],
            "few_shot_loss": round(result.loss, 6),
            "few_shot_loss_zero_weights": round(result.zero_loss, 6),
            "search_seconds": round(result.seconds, 2),
        }
        if result.restarts:
            out["restarts"] = [{"seed": r.seed, "cv_loss": round(r.cv_loss, 6)}
                               for r in result.restarts]
        if result.guard is not None:
            out["guard"] = result.guard.summary()
        return out

    def _hydra_compose_system(
        self,
        weights: Sequence[float],
        seed: int,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        test: Sequence[Example],
    ) -> dict[str, Any]:
        """A Hydra module from a compose row's weights, router fitted on the few-shot set."""
        from composer.hydra.compose import compose_hydra_module, lora_candidate_from

        chat = self.settings.use_chat_template
        built = compose_hydra_module(
            loaded, [lora_candidate_from(c) for c in candidates], weights, few, None,
            num_heads=min(self.hydra_heads, len(candidates)), use_chat_template=chat, seed=seed,
        )
        scored = self._score_with_hydra(loaded, built.module, test)
        fit = built.fit
        return {
            **scored,
            "heads": built.module.config.num_heads,
            "few_shot_loss_before_fit": round(fit.fewshot_loss_before, 6) if fit else None,
            "few_shot_loss_after_fit": round(fit.fewshot_loss_after, 6) if fit else None,
        }

    def _score(
        self, loaded: LoadedModel, test: Sequence[Example], demonstrations: Sequence[Example] = ()
    ) -> dict[str, Any]:
        return score_test(loaded, test, demonstrations=demonstrations,
                          use_chat_template=self.settings.use_chat_template,
                          max_length=self.settings.max_length)

    def _score_with_hydra(
        self, loaded: LoadedModel, module: HydraModule, test: Sequence[Example]
    ) -> dict[str, Any]:
        from composer.hydra.runtime import attach_hydra

        handle = attach_hydra(loaded.model, module, dtype=loaded.dtype)
        try:
            return self._score(loaded, test)
        finally:
            handle.detach()
