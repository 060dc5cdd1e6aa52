"""Per-layer-group weights and restarts picked by cross-validation, on tiny real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from composer.candidates import load_layers, read_candidate
from composer.compose import ComposeConfig, ComposeSession, compose, cv_folds, write_composition
from composer.data import Example
from composer.methods import get_method, layer_blocks
from composer.objectives import get_objective
from composer.search import SearchConfig
from loradex.errors import ConfigError
from tests.support.tiny_models import FEW_SHOT

EXAMPLES = [Example(r["input"], r["target"], tuple(r["choices"]) if "choices" in r else None)
            for r in FEW_SHOT]


def test_layer_blocks_cut_consecutive_layers_in_numeric_order():
    paths = [f"model.layers.{i}.self_attn.{p}" for i in range(30) for p in ("q_proj", "v_proj")]
    blocks = layer_blocks(sorted(paths), 3)  # sorted as text: layers.10 before layers.2
    depths = [sorted({int(p.split(".")[2]) for p in block}) for block in blocks]
    assert depths == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert all(len(b) == 20 for b in blocks)
    assert layer_blocks(paths, 1) == [paths]
    uneven = layer_blocks(paths[:10], 2)  # 5 blocks into 2 runs: 3 + 2
    assert [len(b) for b in uneven] == [6, 4]


def test_layer_blocks_keep_encoder_and_decoder_stacks_apart():
    paths = [f"{stack}.block.{i}.layer.0.SelfAttention.q" for stack in ("encoder", "decoder")
             for i in range(2)]
    first, second = layer_blocks(paths, 2)
    assert {p.split(".")[0] for p in first} == {"decoder"}
    assert {p.split(".")[0] for p in second} == {"encoder"}


def test_more_layer_groups_than_blocks_is_refused():
    with pytest.raises(ConfigError, match=r"--layer-groups must be between 1 and .* \(2\)"):
        layer_blocks(["model.layers.0.q", "model.layers.1.q"], 3)


@pytest.mark.parametrize("method", ["lorahub", "mixed-rank"])
def test_each_layer_group_is_composed_with_its_own_weights(
    method, tiny_causal_dir, tiny_loras, load_tiny
):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras]
    layers = [load_layers(c) for c in cands]
    n = len(cands)
    w = np.random.default_rng(4).uniform(-1.5, 1.5, size=2 * n)
    x = torch.randn(2, 3, loaded.model.config.hidden_size)
    with ComposeSession(loaded, cands, get_method(method), layer_groups=2) as session:
        assert session.dim == 2 * n
        session.set_weights(w)
        for depth, block_w in ((0, w[:n]), (1, w[n:])):
            path = f"model.layers.{depth}.self_attn.q_proj"
            layer = loaded.model.get_submodule(path)
            delta = _expected_delta(method, cands, layers, path, block_w)
            torch.testing.assert_close(
                layer(x), layer.base(x) + x @ delta.T, rtol=1e-5, atol=1e-5
            )


def _expected_delta(method, cands, layers, path, w):
    if method == "lorahub":
        a = sum(float(wi) * lm[path].a for wi, lm in zip(w, layers, strict=True))
        b = sum(float(wi) * lm[path].b for wi, lm in zip(w, layers, strict=True))
        return cands[0].scale * (b @ a)
    return sum(float(wi) * c.scale * (lm[path].b @ lm[path].a)
               for wi, c, lm in zip(w, cands, layers, strict=True))


def test_equal_weights_in_every_group_give_the_ungrouped_losses(
    tiny_causal_dir, tiny_loras, load_tiny
):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras]
    objective = get_objective("lm")
    objective.prepare(loaded, EXAMPLES, use_chat_template=True)
    w = np.random.default_rng(5).uniform(-1.5, 1.5, size=(3, len(cands)))
    with ComposeSession(loaded, cands, get_method("lorahub"), max_groups=3) as plain:
        expected = plain.losses(objective, w)
    with ComposeSession(
        loaded, cands, get_method("lorahub"), max_groups=3, layer_groups=2
    ) as grouped:
        tiled = np.stack([grouped.per_candidate(row) for row in w])
        batched = grouped.losses(objective, tiled)
        # Different weights per group really change the loss.
        split = tiled.copy()
        split[:, : len(cands)] = 0.0
        assert not np.allclose(grouped.losses(objective, split), batched)
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-5)


def test_layer_group_composition_loads_in_peft_with_the_searched_loss(
    tiny_causal_dir, tiny_loras, load_tiny, tmp_path
):
    from peft import PeftModel

    from composer.batching import make_batch, mean_target_loss
    from composer.data import encode_examples

    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    config = ComposeConfig(layer_groups=2, search=SearchConfig(budget=10, seed=2))
    result = compose(loaded, cands, EXAMPLES, config, progress=False)
    assert result.weights.shape == (6,) and result.weights_by_group().shape == (2, 3)
    out = write_composition(result, loaded, tmp_path / "grouped")
    fresh = load_tiny(tiny_causal_dir)
    peft_model = PeftModel.from_pretrained(fresh.model, str(out))
    batch = make_batch(encode_examples(fresh.tokenizer, EXAMPLES, seq2seq=False), fresh.model)
    with torch.no_grad():
        loss = float(mean_target_loss(peft_model.get_base_model(), batch)[0])
    assert loss == pytest.approx(result.loss, abs=1e-5)
    comp = json.loads((out / "loradex_provenance.json").read_text())
    assert comp["composition"]["layer_groups"] == 2
    assert np.allclose(comp["composition"]["layer_group_weights"], result.weights_by_group())
    parent = [e["weight"] for e in comp["lineage"]]
    assert parent == pytest.approx(list(result.weights_by_group().mean(axis=0)), abs=1e-7)
    assert "groups of consecutive layers" in (out / "README.md").read_text()


def test_cv_folds_are_leave_one_out_up_to_five_examples():
    assert [f.tolist() for f in cv_folds(3)] == [[0], [1], [2]]
    assert [len(f) for f in cv_folds(12)] == [3, 3, 2, 2, 2]
    with pytest.raises(ConfigError, match="at least 2 few-shot examples"):
        cv_folds(1)


def test_restarts_pick_the_seed_with_the_lowest_cross_validated_loss(
    tiny_causal_dir, tiny_loras, load_tiny
):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    examples = EXAMPLES[:3]
    search = SearchConfig(budget=6, seed=10)
    config = ComposeConfig(restarts=3, search=search)
    result = compose(loaded, cands, examples, config, progress=False)
    assert [r.seed for r in result.restarts] == [10, 11, 12] and result.folds == 3
    best = min(result.restarts, key=lambda r: r.cv_loss)
    assert len({round(r.cv_loss, 6) for r in result.restarts}) > 1  # seeds do differ
    for rec in result.restarts:
        assert rec.cv_loss == pytest.approx(np.mean(rec.fold_losses))
        assert (rec.loss is not None) == (rec is best)
    # The picked weights are the plain search with the best seed on all examples.
    single = compose(loaded, cands, examples,
                     ComposeConfig(search=SearchConfig(budget=6, seed=best.seed)), progress=False)
    np.testing.assert_allclose(result.weights, single.weights)
    assert result.loss == pytest.approx(single.loss)
    # A fold's held-out loss is the search on the other examples, scored on the one left out.
    fold0 = compose(loaded, cands, examples[1:],
                    ComposeConfig(search=SearchConfig(budget=6, seed=10)), progress=False)
    scorer = get_objective("lm")
    scorer.prepare(loaded, examples[:1], use_chat_template=True)
    with ComposeSession(loaded, cands, get_method("lorahub")) as session:
        held = float(session.losses(scorer, fold0.weights[None])[0])
    assert result.restarts[0].fold_losses[0] == pytest.approx(held, abs=1e-6)
    # Reproducible with the same seed.
    again = compose(loaded, cands, examples, config, progress=False)
    np.testing.assert_array_equal(again.weights, result.weights)
    assert [r.cv_loss for r in again.restarts] == [r.cv_loss for r in result.restarts]


def test_restarts_average_the_weights_of_every_seed(tiny_causal_dir, tiny_loras, load_tiny):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    config = ComposeConfig(restarts=2, restart_pick="average",
                           search=SearchConfig(budget=5, seed=0, l1=0.1))
    result = compose(loaded, cands, EXAMPLES[:2], config, progress=False)
    assert all(r.weights is not None for r in result.restarts)
    mean = np.mean([r.weights for r in result.restarts], axis=0)
    np.testing.assert_allclose(result.weights, mean)
    objective = get_objective("lm")
    objective.prepare(loaded, EXAMPLES[:2], use_chat_template=True)
    with ComposeSession(loaded, cands, get_method("lorahub")) as session:
        loss = float(session.losses(objective, mean[None])[0])
    assert result.loss == pytest.approx(loss, abs=1e-6)
    assert result.objective == pytest.approx(loss + 0.1 * np.abs(mean).sum(), abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"restarts": 0}, "--restarts must be >= 1"),
        ({"layer_groups": 0}, "--layer-groups must be >= 1"),
        ({"restart_pick": "vote"}, "--restart-pick must be one of best, average"),
    ],
)
def test_bad_restart_and_group_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ComposeConfig(**overrides).make_method()
