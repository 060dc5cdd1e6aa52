"""``loradex publish``: validate an adapter folder, complete its card, upload it in one commit.

The folder is validated by the registry's ``inspect_adapter_folder`` (config agrees with the
tensors). The upload is staged in a temporary folder (hard links where possible), so the
user's folder is never modified, and file names are kept exactly: the published repo loads
with ``peft.PeftModel.from_pretrained`` unchanged.

Card metadata written (YAML front matter of ``README.md``; existing values are kept):
``base_model``, ``library_name: peft``, ``tags`` (+ ``lora``, ``peft``, ``loradex``),
``license`` (``--license``), and a ``loradex`` block with ``rank``, ``target_modules``,
``task_name``/``task_category`` when known and ``lineage`` for composed modules. Lineage comes
from ``loradex_provenance.json`` in the folder (written by the composer:
``{"lineage": [{"repo_id", "revision", "weight", "role"}, ...], ...}``) or from an existing
``loradex.lineage`` in the card.

A Hydra module folder (``hydra_config.json`` + ``hydra_model.safetensors``) is validated by
the Hydra checks (``registry.hydra``, through the same ``inspect_adapter_folder``) and published
with ``library_name: loradex`` (stock PEFT cannot load it), tags ``loradex``, ``hydra-lora`` and
``base_model:adapter:<base>`` (what ``loradex sync`` lists), and ``loradex.kind: hydra`` +
``num_heads``; see ``docs/hydra-format.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradex.documents import as_list
from loradex.errors import InvalidAdapter
from registry.adapter_files import inspect_adapter_folder, read_json_object
from registry.cards import CARD, parse_card
from registry.repo_ids import check_repo_id
from registry.signatures import folder_signature, sign_folder_module

if TYPE_CHECKING:
    from hub_client.client import HubClient
    from registry.embedders import Embedder
    from registry.entities import Module
    from registry.store import RegistryStore

PROVENANCE_FILE = "loradex_provenance.json"


@dataclass(frozen=True)
class PublishResult:
    """What was published where."""

    repo_id: str = field(metadata={"help": "repo id"})
    revision: str = field(metadata={"help": "commit sha of the upload"})
    url: str = field(metadata={"help": "repo URL on the Hub"})
    module: Module = field(metadata={"help": "the module as indexed locally"})
    skipped: tuple[str, ...] = field(
        default=(), metadata={"help": "files of the folder left out (pickles, outside links)"}
    )


def read_provenance(folder: Path) -> dict[str, Any] | None:
    """The composer's provenance record of a folder, if any (InvalidAdapter when malformed)."""
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return None
    data = read_json_object(path)
    lineage = data.get("lineage", [])
    if not isinstance(lineage, list) or not all(
        isinstance(e, str) or (isinstance(e, dict) and e.get("repo_id")) for e in lineage
    ):
        raise InvalidAdapter(f"{path}: 'lineage' must be a list of {{repo_id, ...}} entries")
    return data


def build_card(folder: Path, module: Module, repo_id: str, license_id: str | None) -> str:
    """The README.md to publish: existing card completed with the metadata loradex relies on."""
    card_path = folder / CARD
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    front, body = parse_card(existing)
    front = dict(front)
    front.setdefault("base_model", module.base_model_raw or module.base_model)
    hydra = module.kind == "hydra"
    front["library_name"] = "loradex" if hydra else "peft"
    tags = as_list(front.get("tags"))
    wanted: tuple[str, ...] = ("loradex", "hydra-lora") if hydra else ("lora", "peft", "loradex")
    if hydra:
        # The Hub derives base_model:adapter:<base> for library_name peft only; sync lists by it.
        wanted += tuple(f"base_model:adapter:{b}" for b in as_list(front["base_model"]))
    for tag in wanted:
        if tag not in tags:
            tags.append(tag)
    front["tags"] = tags
    if license_id:
        front["license"] = license_id
    extra = dict(front.get("loradex") or {}) if isinstance(front.get("loradex"), dict) else {}
    if hydra:
        extra["kind"] = "hydra"
        extra["num_heads"] = module.num_heads
    extra.setdefault("rank", module.rank)
    extra.setdefault("target_modules", list(module.target_modules))
    if module.task_name:
        extra.setdefault("task_name", module.task_name)
    if module.task_category:
        extra.setdefault("task_category", module.task_category)
    provenance = read_provenance(folder)
    if provenance is not None:
        if provenance.get("lineage"):
            extra["lineage"] = provenance["lineage"]
        for key in ("task_name", "task_category", "method"):
            if provenance.get(key):
                extra.setdefault(key, provenance[key])
    front["loradex"] = extra
    if not body and hydra:
        name = repo_id.split("/", 1)[1]
        body = (
            f"# {name}\n\nA Hydra module (shared A of rank {module.rank}, {module.num_heads} "
            f"heads, a router; targets {', '.join(module.target_modules)}) for "
            f"`{module.base_model}`. Format: loradex's docs/hydra-format.md.\n\n"
            "```python\nfrom composer.hydra.format import load_hydra\n"
            "from composer.hydra.runtime import attach_hydra\n\n"
            f"handle = attach_hydra(model, load_hydra(folder))  # folder: loradex pull {repo_id}"
            "\n```"
        )
    if not body:
        name = repo_id.split("/", 1)[1]
        body = (
            f"# {name}\n\nA LoRA adapter (rank {module.rank}, targets "
            f"{', '.join(module.target_modules)}) for `{module.base_model}`.\n\n"
            "```python\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{module.base_model}")\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}")\n```'
        )
    import yaml

    text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{text}---\n\n{body.strip()}\n"


# Formats that unpickle on load: a trainer's output folder holds them (optimizer.pt,
# training_args.bin, rng_state.pth) beside the adapter, and loradex never publishes them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _stage(folder: Path, staging: Path, card: str) -> list[str]:
    """Mirror the folder's visible files into ``staging`` (hard links, else copies) + the card.

    Left out, and returned: pickle-format files, and symlinks that lead outside the folder (a
    link to a key or a home folder would otherwise be uploaded with the adapter).
    """
    skipped: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or "__pycache__" in rel.parts:
            continue
        if path.is_dir() or rel.as_posix() == CARD:
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES or not path.resolve().is_relative_to(folder):
            skipped.append(rel.as_posix())
            continue
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
    (staging / CARD).write_text(card, encoding="utf-8")
    return skipped


def publish_folder(
    client: HubClient,
    store: RegistryStore,
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    license_id: str | None = None,
    message: str | None = None,
    embedder: Embedder | None = None,
) -> PublishResult:
    """Validate, upload in one commit, and index the new revision in the local registry
    (with its signatures: the folder's data signature, a card one by ``embedder``).

    A malformed signature file refuses the publish before the Hub is touched: what is
    published is read by others."""
    check_repo_id(repo_id)
    folder = folder.expanduser().resolve()
    module = inspect_adapter_folder(folder, repo_id=repo_id)
    folder_signature(folder)
    card = build_card(folder, module, repo_id, license_id)
    with tempfile.TemporaryDirectory(prefix="loradex-publish-") as tmp:
        staging = Path(tmp)
        skipped = _stage(folder, staging, card)
        # The completed card must still describe a valid adapter (e.g. lineage well-formed).
        inspect_adapter_folder(staging, repo_id=repo_id)
        url = client.create_repo(repo_id, private=private)
        commit = client.upload_folder(
            repo_id, staging, message or f"Publish {folder.name} with loradex"
        )
        published = inspect_adapter_folder(
            staging, repo_id=repo_id, revision=commit.oid, source=client.endpoint
        )
        signed, _warning = sign_folder_module(published, staging, embedder)
        indexed = store.upsert_module(signed)
    return PublishResult(
        repo_id=repo_id, revision=commit.oid, url=url, module=indexed, skipped=tuple(skipped)
    )
