"""The PEFT options that change what an adapter's tensors mean, read from its config.

A module trained with DoRA, rsLoRA, per-module rank or alpha patterns, a ``lora_bias``, whole
modules saved beside it (``modules_to_save``) or only some layers adapted cannot be used as a
plain LoRA of its rank: the registry records these, shows them, and compatibility and
composition take them into account. Every value is validated here, at the edge, and a bad one
is an :class:`InvalidAdapter` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from loradex.errors import InvalidAdapter
from registry.entities import Module
from registry.lora_tensors import ADAPTER_CONFIG

# "### Framework versions\n\n- PEFT 0.13.2" in the card PEFT writes.
_CARD_PEFT_VERSION = re.compile(r"^\s*-\s*PEFT\s+v?(?P<v>\d+\.\d+(?:\.\d+)?\S*)\s*$", re.M)
_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?[0-9A-Za-z.+-]*$")


@dataclass(frozen=True)
class PeftOptions:
    """PEFT options of one adapter, as the registry stores them."""

    use_dora: bool = field(default=False, metadata={"help": "DoRA (magnitude vectors too)"})
    use_rslora: bool = field(default=False, metadata={"help": "scale alpha/sqrt(r)"})
    lora_bias: bool = field(default=False, metadata={"help": "lora_B has a bias"})
    peft_version: str | None = field(default=None, metadata={"help": "PEFT that saved it"})
    rank_pattern: tuple[tuple[str, int], ...] = field(
        default=(), metadata={"help": "per-module rank overrides"})
    alpha_pattern: tuple[tuple[str, float], ...] = field(
        default=(), metadata={"help": "per-module alpha overrides"})
    modules_to_save: tuple[str, ...] = field(
        default=(), metadata={"help": "modules stored whole beside the adapter"})
    layers_to_transform: tuple[int, ...] = field(
        default=(), metadata={"help": "adapted layer indices (empty: all)"})

    def as_fields(self) -> dict[str, Any]:
        """The options as :class:`~registry.entities.Module` fields (the same names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def composition_blocker(self) -> str | None:
        """Why the composer cannot use the adapter as a plain LoRA (None: it can).

        rsLoRA only changes the scale, which the composer applies; the others change what the
        tensors are, or leave part of the adapter outside its LoRA pairs.
        """
        if self.use_dora:
            return "a DoRA adapter (use_dora) cannot be composed as LoRA"
        if self.rank_pattern or self.alpha_pattern:
            return "per-module rank_pattern/alpha_pattern is not supported by the composer"
        if self.lora_bias:
            return "an adapter with lora_bias cannot be composed as LoRA"
        if self.modules_to_save:
            return (f"modules_to_save ({', '.join(self.modules_to_save)}) are saved whole and "
                    "cannot be composed")
        if self.layers_to_transform:
            return "an adapter of some layers only (layers_to_transform) cannot be composed"
        return None


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: {key!r} must be true or false, got {value!r}")
    return value


def _pattern(config: Mapping[str, Any], key: str, kind: type) -> tuple[tuple[str, Any], ...]:
    value = config.get(key)
    if not value:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: {key!r} must be an object, got {value!r}")
    pairs = []
    for pattern, number in value.items():
        ok = isinstance(number, int | float) and not isinstance(number, bool) and number > 0
        if not ok or (kind is int and not isinstance(number, int)):
            raise InvalidAdapter(
                f"{ADAPTER_CONFIG}: {key} entry {pattern!r} must be a positive "
                f"{'integer' if kind is int else 'number'}, got {number!r}"
            )
        pairs.append((str(pattern), kind(number)))
    return tuple(sorted(pairs))


def _names(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = config.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: {key!r} must be a list of module names")
    return tuple(sorted(set(value)))


def _layers(config: Mapping[str, Any]) -> tuple[int, ...]:
    value = config.get("layers_to_transform")
    if value is None:
        return ()
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items
    ):
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}: 'layers_to_transform' must be a layer index or a list of them, "
            f"got {value!r}"
        )
    return tuple(sorted(set(items)))


def peft_version(config: Mapping[str, Any], card_body: str | None) -> str | None:
    """The PEFT version that saved the adapter: the config's ``peft_version`` (PEFT 0.15+),
    else the "Framework versions" line of the card PEFT writes."""
    value = config.get("peft_version")
    if isinstance(value, str) and _VERSION.match(value.strip()):
        return value.strip()[:32]
    found = _CARD_PEFT_VERSION.search(card_body or "")
    return found.group("v")[:32] if found else None


def read_peft_options(config: Mapping[str, Any], card_body: str | None = None) -> PeftOptions:
    """Validate and read the PEFT options of an adapter config."""
    return PeftOptions(
        use_dora=_flag(config, "use_dora"),
        use_rslora=_flag(config, "use_rslora"),
        lora_bias=_flag(config, "lora_bias"),
        peft_version=peft_version(config, card_body),
        rank_pattern=_pattern(config, "rank_pattern", int),
        alpha_pattern=_pattern(config, "alpha_pattern", float),
        modules_to_save=_names(config, "modules_to_save"),
        layers_to_transform=_layers(config),
    )


def module_peft_options(module: Module) -> PeftOptions:
    """The options the registry recorded for ``module`` (the same field names)."""
    return PeftOptions(**{f.name: getattr(module, f.name) for f in fields(PeftOptions)})
