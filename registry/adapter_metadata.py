"""A registry :class:`~registry.entities.Module` from an adapter's config, header and card.

:func:`module_from_metadata` is the one place a LoRA adapter is judged: ``loradex add`` (files
on disk, through :func:`registry.adapter_files.inspect_adapter_folder`), the Hub sync (metadata
fetched over HTTP) and the built-in Hub's indexer all call it, so they accept exactly the same
adapters.

Model-card front matter understood, besides the Hub's usual keys (``base_model``, ``license``,
``tags``, ``datasets``, ``language``)::

    loradex:
      task_name: past_tense
      task_category: grammar
      description: Rewrites sentences in the past tense.
      lineage:
        - {repo_id: alice/a, revision: <sha>, weight: 0.7, role: parent}

(``task_name``, ``task_category``, ``description``, ``dataset`` are also read at top level.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loradex.documents import as_list
from loradex.errors import InvalidAdapter
from registry.cards import CARD, first_paragraph, parse_card
from registry.entities import LOCAL_SOURCE, LineageEdge, Module, ModuleFile
from registry.lora_tensors import ADAPTER_CONFIG, analyse_lora_tensors
from registry.normalize import (
    is_local_path,
    normalize_license,
    normalize_tags,
    recorded_base_model,
)
from registry.peft_options import read_peft_options

__all__ = ["module_from_metadata"]


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return ",".join(items) or None
    text = str(value).strip()
    return text or None


def _number(value: Any, field_name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: {field_name!r} must be a number, got {value!r}")
    return float(value)


def _lineage(value: Any) -> tuple[LineageEdge, ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise InvalidAdapter(f"{CARD}: loradex.lineage must be a list")
    edges = []
    for item in value:
        if isinstance(item, str):
            edges.append(LineageEdge(parent_repo_id=item))
            continue
        if not isinstance(item, dict) or not item.get("repo_id"):
            raise InvalidAdapter(f"{CARD}: each loradex.lineage entry needs a repo_id")
        weight = item.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
            raise InvalidAdapter(f"{CARD}: lineage weight of {item['repo_id']} is not a number")
        edges.append(
            LineageEdge(
                parent_repo_id=str(item["repo_id"]),
                parent_revision=_as_str(item.get("revision")),
                weight=float(weight) if weight is not None else None,
                role=str(item.get("role") or "parent"),
            )
        )
    return tuple(edges)


def _base_model(config: Mapping[str, Any], front: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The recorded base model and whether it is a local path. A config that names a folder
    on the author's disk ("/content/llama") yields to a Hub id in the card's ``base_model``."""
    from_config = _as_str(config.get("base_model_name_or_path"))
    from_card = _as_str(as_list(front.get("base_model"))[:1])
    if from_config and is_local_path(from_config) and from_card and not is_local_path(from_card):
        return from_card, False
    raw = from_config or from_card
    return raw, is_local_path(raw)


def module_from_metadata(
    repo_id: str,
    config: Mapping[str, Any],
    header: Mapping[str, Any],
    card_text: str | None = None,
    *,
    revision: str | None = None,
    source: str = LOCAL_SOURCE,
    files: Iterable[ModuleFile] = (),
    author: str | None = None,
    tags: Iterable[str] = (),
    downloads: int = 0,
    likes: int = 0,
    created_at: Any = None,
    updated_at: Any = None,
    label: str | None = None,
) -> Module:
    """Build a validated :class:`Module` from an adapter config, a safetensors header and a card.

    This is the one place an adapter is judged: ``inspect_adapter_folder`` (files on disk) and
    the Hub sync (metadata fetched over HTTP) both call it. ``label`` prefixes error messages.
    """
    prefix = f"{label}: " if label else ""
    try:
        if not isinstance(config, Mapping):
            raise InvalidAdapter(f"{ADAPTER_CONFIG} is not a JSON object")
        peft_type = str(config.get("peft_type") or "").upper()
        if peft_type != "LORA":
            raise InvalidAdapter(
                f"{ADAPTER_CONFIG}: peft_type is {config.get('peft_type')!r}; "
                "loradex indexes LoRA adapters (peft_type 'LORA')"
            )
        tensors = analyse_lora_tensors(config, header)
        front, body = parse_card(card_text)
    except InvalidAdapter as exc:
        raise InvalidAdapter(f"{prefix}{exc}") from exc
    section = front.get("loradex")
    extra: dict[str, Any] = section if isinstance(section, dict) else {}

    def meta(key: str) -> Any:
        return extra.get(key, front.get(key))

    base_raw, base_is_path = _base_model(config, front)
    if not base_raw:
        raise InvalidAdapter(
            f"{prefix}no base model: {ADAPTER_CONFIG} has no base_model_name_or_path "
            f"and {CARD} has no base_model"
        )
    kind = str(meta("kind") or "lora").lower()
    num_heads = meta("num_heads")
    if kind not in ("lora", "hydra"):
        raise InvalidAdapter(f"{prefix}{CARD}: loradex.kind must be 'lora' or 'hydra'")
    if num_heads is not None and (not isinstance(num_heads, int) or num_heads <= 0):
        raise InvalidAdapter(f"{prefix}{CARD}: loradex.num_heads must be a positive integer")
    file_list = tuple(sorted(files, key=lambda f: f.path))
    try:
        lineage = _lineage(extra.get("lineage"))
        alpha = _number(config.get("lora_alpha"), "lora_alpha")
        dropout = _number(config.get("lora_dropout"), "lora_dropout")
        options = read_peft_options(config, body)
    except InvalidAdapter as exc:
        raise InvalidAdapter(f"{prefix}{exc}") from exc
    namespace = repo_id.split("/", 1)[0] if "/" in repo_id else None
    datasets = meta("dataset") or front.get("datasets")
    return Module(
        repo_id=repo_id,
        revision=revision,
        source=source,
        kind=kind,
        num_heads=num_heads,
        base_model=recorded_base_model(base_raw)[0],
        base_model_raw=base_raw,
        base_model_is_path=base_is_path,
        peft_type=peft_type,
        task_type=_as_str(config.get("task_type")),
        rank=tensors.rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=tensors.target_modules,
        bias=_as_str(config.get("bias")),
        num_parameters=tensors.num_parameters,
        dtype=tensors.dtype,
        total_size=sum(f.size for f in file_list) if file_list else None,
        author=author or _as_str(front.get("author")) or namespace,
        license=normalize_license(_as_str(front.get("license"))),
        tags=normalize_tags([*as_list(front.get("tags")), *tags]),
        task_name=_as_str(meta("task_name")),
        task_category=_as_str(meta("task_category")),
        dataset=_as_str(datasets),
        language=_as_str(front.get("language")),
        description=_as_str(meta("description")) or first_paragraph(body),
        **options.as_fields(),
        downloads=int(downloads or 0),
        likes=int(likes or 0),
        created_at=created_at,
        updated_at=updated_at,
        card_text=body or None,
        files=file_list,
        lineage=lineage,
    )
