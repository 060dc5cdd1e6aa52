"""Objectives for the search: plug-ins that score the model as it is, one loss per weight group.

``lm`` is the paper's objective: the mean cross-entropy of the target tokens of the few-shot
examples. An objective tokenises its examples once (:meth:`Objective.prepare`) and then only
runs forwards; with ``groups > 1`` the batch is repeated so each group of rows meets its own
composed LoRA (see :mod:`composer.lora_runtime`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from transformers import PreTrainedModel

from composer.batching import (
    TargetBatch,
    make_batch,
    mean_target_loss,
    repeat_batch,
    target_token_losses,
)
from composer.data import Example, encode_examples
from composer.models import LoadedModel
from loradex.errors import ConfigError


class Objective(ABC):
    """Scores the current model on fixed examples; lower is better."""

    name: ClassVar[str]

    @abstractmethod
    def prepare(
        self, loaded: LoadedModel, examples: Sequence[Example], *, use_chat_template: bool
    ) -> None:
        """Tokenise ``examples`` once, on the model's device."""

    @abstractmethod
    def losses(self, groups: int = 1) -> torch.Tensor:
        """One loss per weight group ``[groups]`` (float32, on CPU) under the current model."""


OBJECTIVES: dict[str, Callable[[], Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its ``name``."""
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> Objective:
    """A fresh instance of the registered objective ``name``."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]()


class _PackedObjective(Objective):
    """An objective over one packed batch of (prompt, target) sequences, tokenised once.

    ``_pack`` encodes the sequences and keeps the batch; ``_batch(groups)`` repeats it so
    each group of rows meets its own composed LoRA.
    """

    def __init__(self, max_length: int | None = 1024) -> None:
        self.max_length = max_length
        self._loaded: LoadedModel | None = None
        self._batches: dict[int, TargetBatch] = {}

    def _pack(
        self, loaded: LoadedModel, examples: Sequence[Example], *, use_chat_template: bool
    ) -> None:
        encoded = encode_examples(
            loaded.tokenizer,
            examples,
            seq2seq=loaded.is_seq2seq,
            max_length=self.max_length,
            use_chat_template=use_chat_template,
        )
        self._loaded = loaded
        self._batches = {1: make_batch(encoded, loaded.model, packed=True).to(loaded.device)}

    def _model(self) -> PreTrainedModel:
        if self._loaded is None:
            raise RuntimeError("objective used before prepare()")
        return self._loaded.model

    def _batch(self, groups: int) -> TargetBatch:
        if groups not in self._batches:
            self._batches[groups] = repeat_batch(self._batches[1], groups)
        return self._batches[groups]


@register_objective
class LMObjective(_PackedObjective):
    """Mean cross-entropy over all target tokens of the examples (the LoraHub objective).

    Causal models read all examples packed in one row (no padding) and the LM head runs only
    where a target token is predicted.
    """

    name = "lm"

    def prepare(
        self, loaded: LoadedModel, examples: Sequence[Example], *, use_chat_template: bool
    ) -> None:
        self._pack(loaded, examples, use_chat_template=use_chat_template)

    @property
    def batch(self) -> TargetBatch:
        """The prepared single-group batch."""
        return self._batches[1]

    @torch.inference_mode()
    def losses(self, groups: int = 1) -> torch.Tensor:
        return mean_target_loss(self._model(), self._batch(groups), groups).float().cpu()


@register_objective
class ChoiceObjective(_PackedObjective):
    """Cross-entropy of the correct choice among the choices' log-likelihoods.

    Each (example, choice) pair is one sequence: the prompt, then the choice (and the end of
    sequence) as target, scored by the sum of its token log-probabilities, the way ``loradex
    eval`` picks a choice (``length_normalized`` uses the mean instead). The loss is the mean
    over examples of ``-log softmax(scores)[correct]``: a search cannot lower it by learning
    the answer format, only by ranking the right choice above the others.
    """

    name = "choice"

    def __init__(self, max_length: int | None = 1024, length_normalized: bool = False) -> None:
        super().__init__(max_length)
        self.length_normalized = length_normalized
        self._choice_index = torch.empty(0, dtype=torch.long)  # [examples, max choices]
        self._choice_mask = torch.empty(0, dtype=torch.bool)
        self._correct = torch.empty(0, dtype=torch.long)

    def prepare(
        self, loaded: LoadedModel, examples: Sequence[Example], *, use_chat_template: bool
    ) -> None:
        missing = [i for i, ex in enumerate(examples) if not ex.choices]
        if missing:
            raise ConfigError(
                f"the choice objective needs 'choices' on every example; example(s) "
                f"{', '.join(str(i + 1) for i in missing[:5])} have none (use --objective lm)"
            )
        pairs: list[Example] = []
        rows: list[list[int]] = []
        correct: list[int] = []
        for ex in examples:
            assert ex.choices is not None
            rows.append(list(range(len(pairs), len(pairs) + len(ex.choices))))
            correct.append(ex.choices.index(ex.target))
            pairs.extend(Example(input=ex.input, target=choice) for choice in ex.choices)
        self._pack(loaded, pairs, use_chat_template=use_chat_template)
        width = max(len(r) for r in rows)
        self._choice_index = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        self._choice_mask = torch.tensor([[True] * len(r) + [False] * (width - len(r))
                                          for r in rows])
        self._correct = torch.tensor(correct)

    def sequence_scores(self, token_losses: torch.Tensor, groups: int) -> torch.Tensor:
        """Log-likelihood score of every (example, choice) sequence, ``[groups, sequences]``."""
        single = self._batches[1]
        seq = single.target_example.to(token_losses.device)
        n_seq = single.n_examples
        logp = -token_losses.float().view(groups, -1)
        scores = torch.zeros(groups, n_seq, device=logp.device).index_add_(1, seq, logp)
        if self.length_normalized:
            counts = torch.bincount(seq, minlength=n_seq).clamp(min=1).to(logp.dtype)
            scores = scores / counts
        return scores

    def choice_losses(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the correct choice per group, from sequence scores."""
        index = self._choice_index.to(scores.device)
        mask = self._choice_mask.to(scores.device)
        per_choice = scores[:, index].masked_fill(~mask, float("-inf"))  # [g, examples, C]
        logprobs = torch.log_softmax(per_choice, dim=-1)
        correct = self._correct.to(scores.device)
        picked = logprobs.gather(2, correct.view(1, -1, 1).expand(scores.shape[0], -1, 1))
        return -picked.squeeze(2).mean(dim=1)

    @torch.inference_mode()
    def losses(self, groups: int = 1) -> torch.Tensor:
        token_losses = target_token_losses(self._model(), self._batch(groups))
        return self.choice_losses(self.sequence_scores(token_losses, groups)).float().cpu()


@register_objective
class NormalizedChoiceObjective(ChoiceObjective):
    """The ``choice`` objective with each choice scored by its mean token log-probability."""

    name = "choice-normalized"

    def __init__(self, max_length: int | None = 1024) -> None:
        super().__init__(max_length=max_length, length_normalized=True)


def default_objective(examples: Sequence[Example]) -> str:
    """``choice`` when every example has choices (the search cannot win on format), else ``lm``."""
    return "choice" if examples and all(ex.choices for ex in examples) else "lm"
