"""Composition on tiny real models: maths vs direct computation, batched vs sequential, PEFT
round trip, and the errors for bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from composer.batching import make_batch, mean_target_loss
from composer.candidates import check_compatible, load_layers, read_candidate, resolve_candidate
from composer.compose import ComposeConfig, ComposeSession, compose, write_composition
from composer.data import Example, encode_examples, load_examples
from composer.methods import get_method
from composer.objectives import get_objective
from composer.search import SearchConfig, nevergrad_name, search_weights
from loradex.errors import ConfigError, IncompatibleModules, InvalidDataFile, ModuleNotFound
from tests.support.tiny_models import FEW_SHOT, save_lora, write_jsonl

EXAMPLES = [Example(r["input"], r["target"], tuple(r["choices"]) if "choices" in r else None)
            for r in FEW_SHOT]


def _weights(n: int, seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(rows, n))


def test_live_composed_layer_equals_direct_lorahub_formula(tiny_causal_dir, tiny_loras, load_tiny):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras]
    layers = [load_layers(c) for c in cands]
    w = _weights(len(cands), 0)[0]
    path = "model.layers.1.self_attn.q_proj"
    base = loaded.model.get_submodule(path)
    x = torch.randn(3, 5, base.in_features)
    with ComposeSession(loaded, cands, get_method("lorahub")) as session:
        session.set_weights(w)
        live = loaded.model.get_submodule(path)(x)
    a = sum(float(wi) * lm[path].a for wi, lm in zip(w, layers, strict=True))
    b = sum(float(wi) * lm[path].b for wi, lm in zip(w, layers, strict=True))
    expected = base(x) + cands[0].scale * x @ (b @ a).T
    torch.testing.assert_close(live, expected, rtol=1e-5, atol=1e-5)
    # The session restores the plain model.
    assert loaded.model.get_submodule(path) is base


def test_mixed_rank_live_layer_is_the_exact_weighted_sum_of_updates(
    tiny_causal_dir, tiny_loras, load_tiny, tmp_path
):
    loaded = load_tiny(tiny_causal_dir)
    odd = save_lora(tiny_causal_dir, tmp_path / "r8", seed=7, rank=8, alpha=4.0)
    cands = [read_candidate(p) for p in [*tiny_loras[:2], odd]]
    layers = [load_layers(c) for c in cands]
    w = _weights(3, 1)[0]
    path = "model.layers.0.self_attn.v_proj"
    base = loaded.model.get_submodule(path)
    x = torch.randn(2, 4, base.in_features)
    with ComposeSession(loaded, cands, get_method("mixed-rank")) as session:
        session.set_weights(w)
        live = loaded.model.get_submodule(path)(x)
        exported = session.bank.export(w)
    delta = sum(float(wi) * c.scale * (lm[path].b @ lm[path].a)
                for wi, c, lm in zip(w, cands, layers, strict=True))
    torch.testing.assert_close(live, base(x) + x @ delta.T, rtol=1e-5, atol=1e-5)
    assert exported.rank == 4 + 4 + 8 and exported.alpha == 16.0
    key = f"base_model.model.{path}.lora_"
    torch.testing.assert_close(
        exported.tensors[key + "B.weight"] @ exported.tensors[key + "A.weight"], delta,
        rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize("method", ["lorahub", "mixed-rank"])
def test_batched_groups_give_the_same_losses_as_one_at_a_time(
    method, tiny_causal_dir, tiny_loras, load_tiny
):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras]
    objective = get_objective("lm")
    objective.prepare(loaded, EXAMPLES, use_chat_template=True)
    w = _weights(len(cands), 2, rows=5)
    with ComposeSession(loaded, cands, get_method(method), max_groups=5) as session:
        batched = session.losses(objective, w)
        sequential = np.array([session.losses(objective, row[None])[0] for row in w])
    assert len(set(np.round(sequential, 4))) == 5  # the weights do change the loss
    np.testing.assert_allclose(batched, sequential, rtol=1e-5, atol=1e-5)


def test_batched_groups_on_seq2seq(tiny_seq2seq_dir, tiny_t5_loras, load_tiny):
    loaded = load_tiny(tiny_seq2seq_dir)
    cands = [read_candidate(p) for p in tiny_t5_loras]
    objective = get_objective("lm")
    objective.prepare(loaded, EXAMPLES, use_chat_template=True)
    w = _weights(len(cands), 3, rows=4)
    with ComposeSession(loaded, cands, get_method("lorahub"), max_groups=4) as session:
        batched = session.losses(objective, w)
        sequential = np.array([session.losses(objective, row[None])[0] for row in w])
    np.testing.assert_allclose(batched, sequential, rtol=1e-5, atol=1e-5)


def test_search_loss_matches_the_model_peft_loads_from_the_output(
    tiny_causal_dir, tiny_loras, load_tiny, tmp_path, few_shot_file
):
    from peft import PeftModel

    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    config = ComposeConfig(search=SearchConfig(budget=8, seed=3))
    result = compose(loaded, cands, EXAMPLES, config, progress=False)
    out = write_composition(
        result, loaded, tmp_path / "out", examples_file=str(few_shot_file),
        examples_sha256="ab" * 32, n_examples=5,
    )
    assert {p.name for p in out.iterdir()} == {
        "README.md", "adapter_config.json", "adapter_model.safetensors",
        "loradex_provenance.json", "loss_curve.png",
    }
    assert (out / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    fresh = load_tiny(tiny_causal_dir)
    peft_model = PeftModel.from_pretrained(fresh.model, str(out))
    batch = make_batch(encode_examples(fresh.tokenizer, EXAMPLES, seq2seq=False), fresh.model)
    with torch.no_grad():
        loss = float(mean_target_loss(peft_model.get_base_model(), batch)[0])
    assert loss == pytest.approx(result.search.loss, abs=1e-5)
    provenance = json.loads((out / "loradex_provenance.json").read_text())
    assert [e["repo_id"] for e in provenance["lineage"]] == [c.repo_id for c in cands]
    assert [e["weight"] for e in provenance["lineage"]] == pytest.approx(list(result.weights))
    comp = provenance["composition"]
    assert comp["optimizer"] == "cma" and comp["nevergrad_optimizer"] == "OldCMA"
    assert comp["budget"] == 8 and comp["seed"] == 3 and comp["few_shot_sha256"] == "ab" * 32
    assert len(comp["loss_curve"]) == 8
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "lineage:" in card and "library_name: peft" in card


def test_the_loss_plot_leaves_the_callers_matplotlib_backend_alone():
    import matplotlib

    from composer.compose import loss_plot_png

    history = [{"step": i, "objective": 2.0 - i / 10, "best_so_far": 2.0 - i / 10}
               for i in range(5)]
    result: Any = SimpleNamespace(
        search=SimpleNamespace(history=history), zero_loss=2.1, candidates=[0, 1],
        config=ComposeConfig(),
    )
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        png = loss_plot_png(result)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert png.startswith(b"\x89PNG")


def test_batched_search_finds_exactly_what_the_sequential_search_finds(
    tiny_causal_dir, tiny_loras, load_tiny
):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras]
    search = SearchConfig(budget=14, seed=5)
    seq = compose(loaded, cands, EXAMPLES, ComposeConfig(search=search), progress=False)
    bat = compose(loaded, cands, EXAMPLES, ComposeConfig(search=search, batched_population=True),
                  progress=False)
    assert bat.population > 1
    np.testing.assert_allclose(bat.search.curve, seq.search.curve, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bat.weights, seq.weights)


def test_one_candidate_is_searched_without_cma_es():
    # CMA-ES needs two or more weights; nevergrad hands one weight to the optional fcmaes
    # package, which is not a dependency. One weight runs the (1+1)-ES instead, and says so.
    assert nevergrad_name("cma", 1) == "OnePlusOne" and nevergrad_name("cma", 2) == "OldCMA"
    assert nevergrad_name("DiagonalCMA", 1) == "OnePlusOne"
    assert nevergrad_name("NGOpt", 1) == "NGOpt"
    result = search_weights(lambda w: (w[:, 0] - 0.7) ** 2, 1,
                            SearchConfig(budget=40, l1=0.0, seed=1), progress=False)
    assert abs(result.weights[0] - 0.7) < 0.25 and result.loss < 0.7 ** 2 / 4


def test_a_single_candidate_composes(tiny_causal_dir, tiny_loras, load_tiny, tmp_path,
                                     few_shot_file):
    loaded = load_tiny(tiny_causal_dir)
    result = compose(loaded, [read_candidate(tiny_loras[0])], EXAMPLES,
                     ComposeConfig(search=SearchConfig(budget=6)), progress=False)
    assert result.weights.shape == (1,) and result.search.objective <= result.zero_loss + 1e-9
    out = write_composition(result, loaded, tmp_path / "one", examples_file=str(few_shot_file),
                            examples_sha256="ab" * 32, n_examples=5)
    comp = json.loads((out / "loradex_provenance.json").read_text())["composition"]
    assert comp["optimizer"] == "cma" and comp["nevergrad_optimizer"] == "OnePlusOne"


def test_first_points_are_tried_first_and_the_search_starts_at_the_best():
    # A bowl around the third unit vector: from zero, 12 evaluations of CMA-ES stay far from
    # it; tried first, the unit vectors put the search on it at once.
    target = np.eye(5)[2]

    def bowl(points: np.ndarray) -> np.ndarray:
        return ((points - target) ** 2).sum(axis=1)

    config = SearchConfig(budget=12, l1=0.0, seed=0)
    first = np.vstack([np.zeros(5), np.eye(5)])
    started = search_weights(bowl, 5, config, first_points=first, progress=False)
    assert len(started.history) == 12
    assert [h["weights"] for h in started.history[:6]] == first.tolist()
    np.testing.assert_array_equal(started.weights, target)
    assert started.loss == 0.0
    assert search_weights(bowl, 5, config, progress=False).loss > 0.1
    # The search itself is centred on the best first point, not on zero.
    rest = np.array([h["weights"] for h in started.history[6:]])
    assert np.abs(rest.mean(axis=0) - target).max() < np.abs(rest.mean(axis=0)).max()
    with pytest.raises(ConfigError, match="budget 6 leaves no evaluation"):
        search_weights(bowl, 5, replace(config, budget=6), first_points=first, progress=False)
    with pytest.raises(ConfigError, match=r"first points must be \[n, 5\]"):
        search_weights(bowl, 5, config, first_points=np.eye(4), progress=False)
    with pytest.raises(ConfigError, match=r"within the bound 0\.5"):
        search_weights(bowl, 5, replace(config, bound=0.5), first_points=first, progress=False)


def test_best_single_start_tries_each_candidate_first(tiny_causal_dir, tiny_loras, load_tiny,
                                                      tmp_path, few_shot_file):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    config = ComposeConfig(start="best-single", layer_groups=2,
                           search=SearchConfig(budget=8, seed=1))
    result = compose(loaded, cands, EXAMPLES, config, progress=False)
    tried = [h["weights"] for h in result.search.history[:4]]
    assert tried == np.vstack([np.zeros(6), np.tile(np.eye(3), 2)]).tolist()
    assert tried[0] == [0.0] * 6
    singles = [h["objective"] for h in result.search.history[:4]]
    assert result.search.objective <= min(singles)
    assert result.search.history[0]["loss"] == pytest.approx(result.zero_loss, abs=1e-6)
    out = write_composition(result, loaded, tmp_path / "s", examples_file=str(few_shot_file),
                            examples_sha256="ab" * 32, n_examples=5)
    comp = json.loads((out / "loradex_provenance.json").read_text())["composition"]
    assert comp["start"] == "best-single"
    assert "starting from the best of zero weights and each parent alone (4 of the " \
           "evaluations)" in (out / "README.md").read_text()
    with pytest.raises(ConfigError, match="--budget 4 must be larger"):
        compose(loaded, cands, EXAMPLES, replace(config, search=SearchConfig(budget=4)),
                progress=False)
    with pytest.raises(ConfigError, match="--start must be one of"):
        ComposeConfig(start="middle").make_method()


def test_search_starts_at_zero_and_respects_the_bound(tiny_causal_dir, tiny_loras, load_tiny):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras]
    config = ComposeConfig(search=SearchConfig(budget=20, bound=0.2, l1=0.0, optimizer="NGOpt"))
    result = compose(loaded, cands, EXAMPLES, config, progress=False)
    points = np.array([h["weights"] for h in result.search.history])
    assert np.abs(points).max() <= 0.2 + 1e-12
    assert result.search.objective <= result.zero_loss + 1e-9


def test_mixed_rank_svd_output_reports_energy(tiny_causal_dir, tiny_loras, load_tiny, tmp_path):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    config = ComposeConfig(method="mixed-rank", svd_rank=4, search=SearchConfig(budget=4))
    result = compose(loaded, cands, EXAMPLES, config, progress=False)
    assert result.exported.rank == 4
    assert 0.0 < result.exported.info["svd_energy_kept_min"] <= 1.0
    out = write_composition(result, loaded, tmp_path / "svd")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 4


def test_holdout_reports_zero_result_and_each_candidate(tiny_causal_dir, tiny_loras, load_tiny):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:2]]
    config = ComposeConfig(search=SearchConfig(budget=3))
    result = compose(loaded, cands, EXAMPLES, config, holdout=EXAMPLES[3:], progress=False)
    labels = [row.label for row in result.holdout]
    assert labels == ["zero weights (base model)", "composed",
                      f"only {cands[0].repo_id}", f"only {cands[1].repo_id}"]
    assert result.holdout[0].loss == pytest.approx(
        float(compose_loss_at_zero(loaded, EXAMPLES[3:])), abs=1e-5
    )
    assert all(row.choice_accuracy is not None for row in result.holdout)


def compose_loss_at_zero(loaded, examples) -> float:
    batch = make_batch(encode_examples(loaded.tokenizer, examples, seq2seq=False), loaded.model)
    with torch.no_grad():
        return float(mean_target_loss(loaded.model, batch)[0])


# --------------------------------------------------------------------------- bad input


def test_unequal_ranks_are_refused_naming_the_mixed_rank_method(tiny_causal_dir, tiny_loras,
                                                                tmp_path):
    odd = read_candidate(save_lora(tiny_causal_dir, tmp_path / "r8", seed=1, rank=8, alpha=16))
    cands = [read_candidate(tiny_loras[0]), odd]
    with pytest.raises(IncompatibleModules, match=r"unequal ranks.*mixed-rank"):
        get_method("lorahub").check(cands)
    get_method("mixed-rank").check(cands)  # fine for the exact sum


def test_mixed_base_models_and_targets_are_refused(tiny_causal_dir, tiny_loras, tmp_path):
    other = read_candidate(
        save_lora(tiny_causal_dir, tmp_path / "other", seed=2, base_model_name="org/other-model")
    )
    with pytest.raises(IncompatibleModules, match="mixed base models"):
        check_compatible([read_candidate(tiny_loras[0]), other])
    with pytest.raises(IncompatibleModules, match="not on the base model org/other-model"):
        check_compatible([read_candidate(tiny_loras[0])], base_model="org/other-model")
    qk = read_candidate(
        save_lora(tiny_causal_dir, tmp_path / "qk", seed=3, targets=("q_proj", "k_proj"))
    )
    with pytest.raises(IncompatibleModules, match="different target modules"):
        check_compatible([read_candidate(tiny_loras[0]), qk])


def test_missing_candidates_are_refused(tmp_path):
    with pytest.raises(ModuleNotFound, match="no such folder"):
        resolve_candidate(str(tmp_path / "nope"))
    with pytest.raises(ModuleNotFound, match="not in the local cache"):
        resolve_candidate("someone/not-pulled", cache_dir=tmp_path)
    with pytest.raises(ModuleNotFound, match="local folder"):
        resolve_candidate("local/gone", module_dirs=[tmp_path])


def test_empty_and_malformed_few_shot_files_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InvalidDataFile, match=r"empty\.jsonl: no examples"):
        load_examples(empty)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "x", "output": "y"}])
    with pytest.raises(InvalidDataFile, match=r"bad\.jsonl:1"):
        load_examples(bad)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown nevergrad optimizer"):
        SearchConfig(optimizer="NoSuchOpt").validate()
    with pytest.raises(ConfigError, match="did you mean"):
        SearchConfig(optimizer="ngopt").validate()
    with pytest.raises(ConfigError, match="svd-rank only applies"):
        ComposeConfig(svd_rank=4).make_method()
    with pytest.raises(ConfigError, match="unknown composition method"):
        ComposeConfig(method="ties").make_method()


def test_output_folder_is_not_overwritten(tiny_causal_dir, tiny_loras, load_tiny, tmp_path):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:2]]
    result = compose(loaded, cands, EXAMPLES, ComposeConfig(search=SearchConfig(budget=2)),
                     progress=False)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        write_composition(result, loaded, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_candidate_layers_pair_up(tiny_loras):
    layers = load_layers(read_candidate(tiny_loras[0]))
    assert len(layers) == 4  # 2 blocks x q_proj, v_proj
    for tensors in layers.values():
        assert tensors.a.shape[0] == 4 and tensors.b.shape[1] == 4


def test_candidates_from_a_relative_folder(tiny_loras, monkeypatch):
    monkeypatch.chdir(Path(tiny_loras[0]).parent)
    assert resolve_candidate("./mod0").rank == 4
