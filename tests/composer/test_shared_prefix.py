"""Shared-prompt packing: the choices of a question read its prompt once, with the same scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from composer.batching import pack_causal, packed_length, prefix_groups, target_token_losses
from composer.data import EncodedExample
from composer.inference import sequence_logprobs
from tests.support.tiny_models import direct_logprobs

# Three questions (2, 3 and 1 choices), a prompt-less sequence, then a question again.
OPTIONS = [
    EncodedExample((5, 9, 12, 7), (20, 2)),
    EncodedExample((5, 9, 12, 7), (21, 22, 2)),
    EncodedExample((8, 3), (30, 31, 32, 2)),
    EncodedExample((8, 3), (33, 2)),
    EncodedExample((8, 3), (34, 35, 2)),
    EncodedExample((11, 4, 6), (40, 2)),
    EncodedExample((), (41, 42, 2)),
    EncodedExample((5, 9, 12, 7), (23, 2)),
]


def test_prefix_groups_join_consecutive_equal_prompts_only() -> None:
    assert prefix_groups(OPTIONS) == [[0, 1], [2, 3, 4], [5], [6], [7]]
    # Prompts once, each target without its last token (only predicted, never read).
    assert packed_length(OPTIONS) == 4 + (1 + 2) + 2 + (3 + 1 + 2) + 3 + 1 + 2 + 4 + 1


def test_shared_prompt_mask_hides_the_other_choices() -> None:
    batch = pack_causal(OPTIONS[:2])  # prompt p0..p3, choice 0: [20], choice 1: [21, 22]
    mask = batch.attention_mask[0, 0]
    assert batch.input_ids.tolist() == [[5, 9, 12, 7, 20, 21, 22]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 4, 5]]
    assert mask[5].tolist() == [True] * 4 + [False, True, False]  # 21 sees the prompt, not 20
    assert mask[6].tolist() == [True] * 4 + [False, True, True]
    # Each choice's first token is predicted from the prompt's last position.
    assert batch.target_cols.tolist() == [3, 4, 3, 5, 6]
    assert batch.target_example.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(("batch_size", "max_tokens"), [(16, 1024), (2, 1024), (16, 8), (1, 1)])
def test_shared_prompt_scores_equal_separate_forwards(
    tiny_causal_dir: Path, load_tiny: Callable[..., object], batch_size: int, max_tokens: int
) -> None:
    loaded = load_tiny(tiny_causal_dir)
    got = sequence_logprobs(loaded, OPTIONS, batch_size=batch_size, max_tokens=max_tokens)
    assert got == pytest.approx(direct_logprobs(loaded.model, OPTIONS), abs=1e-4)


def test_shared_prompt_losses_equal_padded_rows(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    from composer.batching import make_batch

    loaded = load_tiny(tiny_causal_dir)
    packed = make_batch(OPTIONS, loaded.model, packed=True)
    padded = make_batch(OPTIONS, loaded.model, packed=False)
    with torch.no_grad():
        by_packed = target_token_losses(loaded.model, packed)
        by_padded = target_token_losses(loaded.model, padded)

    def per_example(batch, losses):  # the two layouts list target tokens in different orders
        sums = torch.zeros(batch.n_examples, dtype=torch.float64)
        return sums.index_add_(0, batch.target_example, losses.double())

    assert torch.allclose(per_example(packed, by_packed), per_example(padded, by_padded), atol=1e-4)


def test_stacked_rows_give_the_packed_losses(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    from composer.batching import stack_packed

    loaded = load_tiny(tiny_causal_dir)
    rows = [pack_causal([OPTIONS[i] for i in group]) for group in prefix_groups(OPTIONS)
            if OPTIONS[group[0]].prompt_ids]
    stacked = stack_packed(rows, pad_id=0)
    width = stacked.input_ids.shape[1]
    assert width == max(r.input_ids.shape[1] for r in rows)
    # Row 0 is one token short: its pad sees itself only, and no real token sees it.
    mask = stacked.attention_mask[0, 0]
    pad = width - rows[0].input_ids.shape[1]
    assert pad == 1
    assert mask[:pad, :pad].equal(torch.eye(pad, dtype=torch.bool))
    assert not mask[pad:, :pad].any()
    # Prompt spans move with the padding; example numbers run on across rows.
    assert stacked.prompt_spans[0] == (pad, 4)
    assert stacked.n_examples == sum(r.n_examples for r in rows)
    with torch.no_grad():
        by_row = torch.cat([target_token_losses(loaded.model, r) for r in rows])
        by_stack = target_token_losses(loaded.model, stacked)
    assert torch.allclose(by_row, by_stack, atol=1e-4)
