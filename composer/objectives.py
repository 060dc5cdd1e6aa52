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

from composer.batching import TargetBatch, make_batch, mean_target_loss, repeat_batch
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


@register_objective
class LMObjective(Objective):
    """Mean cross-entropy over all target tokens of the examples (the LoraHub objective).

    Causal models read all examples packed in one row (no padding) and the LM head runs only
    where a target token is predicted.
    """

    name = "lm"

    def __init__(self, max_length: int | None = 1024) -> None:
        self.max_length = max_length
        self._loaded: LoadedModel | None = None
        self._batches: dict[int, TargetBatch] = {}

    def prepare(
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

    @property
    def batch(self) -> TargetBatch:
        """The prepared single-group batch."""
        return self._batches[1]

    def _batch(self, groups: int) -> TargetBatch:
        if groups not in self._batches:
            self._batches[groups] = repeat_batch(self._batches[1], groups)
        return self._batches[groups]

    @torch.inference_mode()
    def losses(self, groups: int = 1) -> torch.Tensor:
        if self._loaded is None:
            raise RuntimeError("objective used before prepare()")
        return mean_target_loss(self._loaded.model, self._batch(groups), groups).float().cpu()
