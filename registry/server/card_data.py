"""What a repo's README.md says to the Hub: its ``cardData`` and the tags derived from it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from loradex.documents import as_list
from registry.cards import CARD, parse_front_matter
from registry.lora_tensors import ADAPTER_CONFIG
from registry.server.blobstore import BlobStore
from registry.server.types import TreeFile

log = logging.getLogger("loradex.server")


def card_data(blobs: BlobStore, files: Sequence[TreeFile], repo_id: str) -> dict[str, Any]:
    """The README's front matter as plain JSON; {} without a README or with unreadable metadata.

    A bad card never fails a commit (this is a Hub: the files are stored); it is logged.
    """
    card: dict[str, Any] = {}
    readme = next((f for f in files if f.path == CARD), None)
    if readme is not None:
        try:
            text = blobs.path_for(readme.sha256).read_text(encoding="utf-8")
            card = parse_front_matter(text)
        except (ValueError, UnicodeDecodeError) as exc:
            log.info("README.md of %s has unreadable metadata: %s", repo_id, exc)
    result: dict[str, Any] = json.loads(json.dumps(card, default=str))  # dates etc. -> plain JSON
    return result


def repo_library(card: dict[str, Any], paths: Iterable[str]) -> str | None:
    """The repo's library as the Hub infers it: the card's ``library_name``, else "peft" for an
    ``adapter_config.json`` at the root (most adapters have no card, or one PEFT did not write)."""
    library = card.get("library_name")
    if isinstance(library, str) and library:
        return library
    return "peft" if ADAPTER_CONFIG in paths else None


def repo_tags(card: dict[str, Any], paths: Iterable[str]) -> list[str]:
    """Tags of a repo as the Hub derives them: card tags, library, base models, licence, formats."""
    paths = list(paths)
    tags: list[str] = []
    tags += as_list(card.get("tags"))
    library = repo_library(card, paths)
    if library:
        tags.append(library)
    for base in as_list(card.get("base_model")):
        tags.append(f"base_model:{base}")
        if library == "peft":
            tags.append(f"base_model:adapter:{base}")
    for lic in as_list(card.get("license")):
        tags.append(f"license:{lic}")
    if any(p.endswith(".safetensors") for p in paths):
        tags.append("safetensors")
    seen: dict[str, None] = {}
    for tag in tags:
        seen.setdefault(tag, None)
    return list(seen)
