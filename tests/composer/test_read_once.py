"""One read of each prompt (read_examples) gives what the three separate passes give."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from composer.data import EncodedExample, Example, encode_examples
from composer.inference import (
    choice_picks,
    generate_answers,
    mean_loss,
    read_examples,
    sequence_logprobs,
    shared_prefix,
)
from composer.metrics import EvalConfig, evaluate_examples

EXAMPLES = [
    Example("yes or no?", "yes", ("yes", "no")),
    Example("past tense of walk", "walked"),  # no choices: answered, not picked
    Example("the cat sat on the", "mat", ("mat", "hat", "the sky is blue")),
    Example("the cat sat on the", "hat", ("mat", "hat", "the sky is blue")),  # same prompt
    Example("one two three four five six seven", "eight", ("eight", "nine")),
    Example("what is the colour of the sky?", "blue", ("blue", "green", "red", "grey")),
]
DEMOS = [Example("one two three", "four"), Example("past tense of jump", "jumped")]


def _separately(loaded, examples, *, demonstrations=(), max_length=1024, max_new_tokens=7):
    encoded = encode_examples(loaded.tokenizer, examples, seq2seq=loaded.is_seq2seq,
                              max_length=max_length, demonstrations=demonstrations)
    answers = generate_answers(loaded, [e.prompt_ids for e in encoded],
                               max_new_tokens=max_new_tokens, batch_size=4)
    picks = choice_picks(loaded, examples, demonstrations=demonstrations, max_length=max_length)
    nll = [-x for x in sequence_logprobs(loaded, encoded)]
    return answers, picks, nll, mean_loss(loaded, encoded)


@pytest.mark.parametrize(("batch_size", "max_tokens"), [(16, 8192), (2, 8192), (16, 40), (1, 1)])
@pytest.mark.parametrize("shots", [0, 2])
def test_one_read_equals_the_separate_passes(
    tiny_causal_dir: Path, load_tiny: Callable[..., object], batch_size: int, max_tokens: int,
    shots: int,
) -> None:
    loaded = load_tiny(tiny_causal_dir)
    demos = DEMOS[:shots]
    answers, picks, nll, loss = _separately(loaded, EXAMPLES, demonstrations=demos)
    read = read_examples(loaded, EXAMPLES, demonstrations=demos, max_new_tokens=7,
                         batch_size=batch_size, max_tokens=max_tokens)
    assert read.answers == answers
    assert read.picks == picks
    assert read.target_nll == pytest.approx(nll, abs=1e-4)
    assert sum(read.target_nll) / sum(read.target_tokens) == pytest.approx(loss, abs=1e-5)
    assert read.picks[1] is None and read.picks[2] in EXAMPLES[2].choices


def test_shared_prefix_leaves_each_prompt_its_last_token() -> None:
    assert shared_prefix([]) == 0
    assert shared_prefix([(1, 2, 3, 4), (1, 2, 3, 5), (1, 2, 9)]) == 2
    assert shared_prefix([(1, 2, 3), (1, 2, 3)]) == 2
    assert shared_prefix([(1, 2), (1, 2, 3)]) == 1
    assert shared_prefix([(7,), (7, 8)]) == 0
    assert shared_prefix([(1, 2), (3, 4)]) == 0


def _spy_prefixes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shared prefixes read_examples reads from now on."""
    import composer.inference as inference

    read: list[tuple[int, ...]] = []
    real = inference._read_prefix

    def spy(loaded: Any, ids: tuple[int, ...]) -> Any:
        read.append(tuple(ids))
        return real(loaded, ids)

    monkeypatch.setattr(inference, "_read_prefix", spy)
    return read


@pytest.mark.parametrize("cut_some", [False, True])
def test_demonstrations_are_read_once_for_every_prompt(
    tiny_causal_dir: Path, load_tiny: Callable[..., object], monkeypatch: pytest.MonkeyPatch,
    cut_some: bool,
) -> None:
    # The demonstrations every prompt begins with are read once and their KV cache shared by
    # every row; a prompt cut to max_length lost that beginning and is read whole. Either way
    # every number is what the separate passes give.
    loaded = load_tiny(tiny_causal_dir)
    encoded = encode_examples(loaded.tokenizer, EXAMPLES, seq2seq=False, demonstrations=DEMOS)
    lengths = sorted(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
    max_length = lengths[len(lengths) // 2] if cut_some else 1024
    prefixes = _spy_prefixes(monkeypatch)
    answers, picks, nll, _ = _separately(loaded, EXAMPLES, demonstrations=DEMOS,
                                         max_length=max_length)
    read = read_examples(loaded, EXAMPLES, demonstrations=DEMOS, max_length=max_length,
                         max_new_tokens=7, batch_size=2)
    assert (read.answers, read.picks) == (answers, picks)
    assert read.target_nll == pytest.approx(nll, abs=1e-4)
    assert any(read.prompt_cut) == cut_some and not all(read.prompt_cut)
    assert len(prefixes) == 1
    uncut = [e.prompt_ids for e, c in zip(encoded, read.prompt_cut, strict=True) if not c]
    assert len(prefixes[0]) == shared_prefix(uncut) > 0
    assert all(p[: len(prefixes[0])] == prefixes[0] for p in uncut)


def test_prompts_cut_differently_for_answers_and_choices(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    # At max_length 6 the answer prompt leaves room for the target and the choices' prompt
    # does not: the two are different segments of the row, as the separate passes read them.
    loaded = load_tiny(tiny_causal_dir)
    encoded = encode_examples(loaded.tokenizer, EXAMPLES, seq2seq=False, max_length=6)
    assert all(len(e.prompt_ids) < 6 for e in encoded)
    answers, picks, nll, _ = _separately(loaded, EXAMPLES, max_length=6)
    read = read_examples(loaded, EXAMPLES, max_length=6, max_new_tokens=7)
    assert (read.answers, read.picks) == (answers, picks)
    assert read.prompt_cut == [True] * len(EXAMPLES)
    assert read_examples(loaded, EXAMPLES, max_new_tokens=0).prompt_cut == [False] * len(EXAMPLES)
    assert read.target_nll == pytest.approx(nll, abs=1e-4)


def _greedy_ids(model, prompt, n: int) -> list[int]:
    """n greedy tokens after ``prompt``, a full forward per token (no cache, no batch)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_answers_stop_at_end_of_sequence(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    # A random tiny model never says </s>: make the third token of one answer the end token.
    loaded = load_tiny(tiny_causal_dir)
    tok = loaded.tokenizer
    encoded = encode_examples(tok, EXAMPLES, seq2seq=False)
    third = _greedy_ids(loaded.model, encoded[2].prompt_ids, 3)[2]
    free = read_examples(loaded, EXAMPLES, max_new_tokens=7)
    tok.eos_token = tok.convert_ids_to_tokens(third)
    assert tok.eos_token_id == third
    answers, *_ = _separately(loaded, EXAMPLES)
    read = read_examples(loaded, EXAMPLES, max_new_tokens=7)
    assert read.answers == answers
    # Three tokens, decoded as generate decodes them, instead of seven.
    stopped = _greedy_ids(loaded.model, encoded[2].prompt_ids, 3)
    assert read.answers[2] == tok.decode(stopped, skip_special_tokens=True) != free.answers[2]


def test_generation_length(tiny_causal_dir: Path, load_tiny: Callable[..., object]) -> None:
    loaded = load_tiny(tiny_causal_dir)
    assert read_examples(loaded, EXAMPLES, max_new_tokens=0).answers == [None] * len(EXAMPLES)
    one = read_examples(loaded, EXAMPLES, max_new_tokens=1).answers
    assert one == _separately(loaded, EXAMPLES, max_new_tokens=1)[0]
    # Without a length: the longest target (with its end token) + 8, as eval has always used.
    encoded = encode_examples(loaded.tokenizer, EXAMPLES, seq2seq=False)
    longest = max(len(e.target_ids) for e in encoded)
    assert read_examples(loaded, EXAMPLES).answers == _separately(
        loaded, EXAMPLES, max_new_tokens=longest + 8)[0]


def test_seq2seq_models_read_separately(
    tiny_seq2seq_dir: Path, load_tiny: Callable[..., object]
) -> None:
    loaded = load_tiny(tiny_seq2seq_dir)
    answers, picks, nll, _ = _separately(loaded, EXAMPLES)
    read = read_examples(loaded, EXAMPLES, max_new_tokens=7)
    assert (read.answers, read.picks) == (answers, picks)
    assert read.target_nll == pytest.approx(nll, abs=1e-4)
    assert read_examples(loaded, EXAMPLES, max_length=3).prompt_cut == [True] * len(EXAMPLES)


def test_eval_report_comes_from_the_one_read(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    loaded = load_tiny(tiny_causal_dir)
    report = evaluate_examples(loaded, EXAMPLES, EvalConfig(max_new_tokens=5), progress=False)
    answers, picks, _, loss = _separately(loaded, EXAMPLES, max_new_tokens=5)
    assert [p["prediction"] for p in report.predictions] == answers
    assert report.loss == pytest.approx(loss, abs=1e-5)
    chosen = [(ex, p) for ex, p in zip(EXAMPLES, picks, strict=True) if p is not None]
    assert report.n_choice_examples == len(chosen) == 5
    assert report.choice_accuracy == sum(p == ex.target for ex, p in chosen) / 5
    no_generation = evaluate_examples(loaded, EXAMPLES, EvalConfig(generate=False),
                                      progress=False)
    assert no_generation.exact_match is None and no_generation.predictions == []
    assert no_generation.choice_accuracy == report.choice_accuracy


def _tiny_sliding(folder: Path, window: int) -> Path:
    """A random 2-layer Gemma 3 whose first layer attends to a window of ``window`` tokens."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tests.support.tiny_models import make_tokenizer

    tok = make_tokenizer(None)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=window,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = Gemma3ForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_sliding_dir(tmp_path: Path) -> Path:
    """A tiny Gemma 3 whose first layer attends to a window of 4 tokens."""
    return _tiny_sliding(tmp_path / "tiny-sliding", 4)


def _assert_own_forward(loaded: Any, encoded: Sequence[EncodedExample], read: Any) -> None:
    """Every target loss and greedy answer of ``read`` is the model's own forward's."""
    model = loaded.model
    with torch.no_grad():
        for i, enc in enumerate(encoded):
            ids = torch.tensor([list(enc.prompt_ids) + list(enc.target_ids)])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            start = len(enc.prompt_ids)
            nll = -sum(float(logp[start + j - 1, t]) for j, t in enumerate(enc.target_ids))
            assert read.target_nll[i] == pytest.approx(nll, abs=1e-4)
            greedy = _greedy_ids(model, enc.prompt_ids, 3)
            assert read.answers[i] == loaded.tokenizer.decode(greedy, skip_special_tokens=True)


@pytest.mark.parametrize("window_in_masks", [True, False])
def test_sliding_window_models_score_as_their_own_forward(
    tiny_sliding_dir: Path, load_tiny: Callable[..., object], monkeypatch: pytest.MonkeyPatch,
    window_in_masks: bool,
) -> None:
    # Once a sequence is longer than the window, packed rows with a plain causal mask, or a
    # cache kept to the window, would give other numbers (or fail): every number must be the
    # model's own forward's, whether our masks carry the window (Gemma 3 takes a mask per kind
    # of layer) or, for a model where they cannot, packing gives way to padded rows.
    import composer.batching as batching
    from composer.batching import make_batch, sliding_window, target_token_losses

    loaded: Any = load_tiny(tiny_sliding_dir)
    model = loaded.model
    assert sliding_window(model) == 4 and batching.windowed_masks(model)
    if not window_in_masks:
        monkeypatch.setattr(batching, "windowed_masks", lambda model: False)
    encoded = encode_examples(loaded.tokenizer, EXAMPLES, seq2seq=False, demonstrations=DEMOS)
    assert all(len(e.prompt_ids) > 4 for e in encoded)
    batch = make_batch(encoded, model)
    assert (batch.position_ids is not None) == window_in_masks  # one packed row, or padded
    prefixes = _spy_prefixes(monkeypatch)
    read = read_examples(loaded, EXAMPLES, demonstrations=DEMOS, max_new_tokens=3)
    assert len(prefixes) == window_in_masks
    _assert_own_forward(loaded, encoded, read)
    with torch.no_grad():
        losses = target_token_losses(model, batch)
    per_example = [float(losses[batch.target_example == i].sum()) for i in range(len(encoded))]
    assert per_example == pytest.approx(read.target_nll, abs=1e-4)
    # Within the window the packed layout is kept either way.
    short = encode_examples(loaded.tokenizer, [Example("a", "b")], seq2seq=False)
    assert len(short[0].prompt_ids) + len(short[0].target_ids) <= 4
    assert make_batch(short, model).position_ids is not None


def test_sliding_window_model_within_its_window_shares_the_prefix(
    tmp_path: Path, load_tiny: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within the window a sliding-window model keeps the one read, prefix cache included.
    loaded: Any = load_tiny(_tiny_sliding(tmp_path / "tiny-sliding-128", 128))
    encoded = encode_examples(loaded.tokenizer, EXAMPLES, seq2seq=False, demonstrations=DEMOS)
    prefixes = _spy_prefixes(monkeypatch)
    read = read_examples(loaded, EXAMPLES, demonstrations=DEMOS, max_new_tokens=3)
    assert len(prefixes) == 1
    _assert_own_forward(loaded, encoded, read)
