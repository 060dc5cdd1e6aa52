"""Normalising the values users filter on: base model ids, tags, target modules, licences.

Adapter configs in the wild record their base model as a Hub id, a Hub URL, a path into the
huggingface_hub cache, or a path on the author's disk. ``recorded_base_model`` turns the first
three into ``org/name`` (case kept, for display) and keeps a path on someone's disk as the
path (``is_local_path``): it is no Hub id, even when it ends in ``org/name``.
``base_model_key`` is the case-insensitive comparison key stored next to it (``path:...`` for
a path, which no Hub id can equal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_PREFIXES = (
    "https://huggingface.co/",
    "http://huggingface.co/",
    "https://hf.co/",
    "http://hf.co/",
    "huggingface.co/",
    "hf.co/",
    "hf://",
)
# ".../models--org--name/snapshots/<sha>/..." in a huggingface_hub cache.
_CACHE_DIR = re.compile(r"(?:^|/)models--(?P<name>[^/]+?)(?:/(?:snapshots|blobs|refs)(?:/.*)?)?$")
# "org/name/tree/main", "org/name/resolve/<rev>/file" in a Hub URL.
_URL_SUFFIX = re.compile(r"^(?P<id>[^/]+(?:/[^/]+)?)/(?:tree|blob|resolve|commit)/.*$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~"))
        or bool(_WINDOWS_DRIVE.match(value))
        or value.count("/") > 1
    )


def normalize_base_model(raw: str | None) -> str:
    """Turn a recorded base model (Hub id, URL, cache path, local path) into ``org/name``.

    >>> normalize_base_model("/cache/hub/models--meta-llama--Llama-2-7b-hf/snapshots/abc")
    'meta-llama/Llama-2-7b-hf'
    >>> normalize_base_model("https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    if raw is None:
        return ""
    value = raw.strip().replace("\\", "/")
    lowered = value.lower()
    for prefix in _URL_PREFIXES:
        if lowered.startswith(prefix):
            value = value[len(prefix) :]
            break
    value = re.sub(r"/{2,}", "/", value).rstrip("/")
    cache = _CACHE_DIR.search(value)
    if cache:
        return cache.group("name").replace("--", "/", 1)
    url_suffix = _URL_SUFFIX.match(value)
    if url_suffix and not _looks_like_path(url_suffix.group("id")):
        return url_suffix.group("id")
    if _looks_like_path(value):
        # A folder on someone's disk: conventionally ``.../org/name``.
        parts = [p for p in value.split("/") if p not in ("", ".", "..", "~")]
        if _WINDOWS_DRIVE.match(value + "/") or (parts and _WINDOWS_DRIVE.match(parts[0] + "/")):
            parts = parts[1:]
        return "/".join(parts[-2:])
    return value


# First folders of relative paths that name a checkpoint on someone's disk, never a Hub org:
# "models/Qwen2_5-1_5b-Instruct", "outputs/llama-7b" (seen in adapter configs in the wild).
_LOCAL_FIRST_PARTS = frozenset({
    "models", "model", "checkpoints", "checkpoint", "output", "outputs", "content", "data",
    "workspace", "home", "root", "tmp", "mnt", "pretrained", "pretrained_models", "weights",
    "ckpt", "ckpts", "base_models", "hf_models", "saved_models", "cache", "drive",
})


def is_local_path(raw: str | None) -> bool:
    """True when a recorded base model is a folder on someone's disk rather than a Hub id
    (a huggingface_hub cache path and a Hub URL name a Hub id, so they are not)."""
    if not raw:
        return False
    value = raw.strip().replace("\\", "/")
    lowered = value.lower()
    if lowered.startswith(_URL_PREFIXES) or _CACHE_DIR.search(value.rstrip("/")):
        return False
    if _looks_like_path(value):
        url_suffix = _URL_SUFFIX.match(value)
        return not (url_suffix and not _looks_like_path(url_suffix.group("id")))
    # "models/Qwen2" or a bare "model": a folder by its conventional name, no Hub id.
    return value.split("/", 1)[0].lower() in _LOCAL_FIRST_PARTS


def recorded_base_model(raw: str) -> tuple[str, bool]:
    """What the registry records for a base model: ``(name, is_path)``; a Hub id (from an id,
    URL or cache path) normalised to ``org/name``, a local path kept as the path."""
    if is_local_path(raw):
        return raw.strip().replace("\\", "/").rstrip("/") or raw, True
    return normalize_base_model(raw), False


def local_path_key(raw: str) -> str:
    """The comparison key of a local-path base model: "path:" and the path, which no Hub id
    can equal (a Hub id has no colon), so such a module never matches a Hub base model."""
    return "path:" + raw.strip().replace("\\", "/").rstrip("/").lower()


def base_model_key(name: str | None) -> str:
    """The case-insensitive comparison key of a (raw or normalised) base model; a local path
    keys as itself (:func:`local_path_key`), so it only ever matches the same path."""
    if name and is_local_path(name):
        return local_path_key(name)
    return normalize_base_model(name).lower()


def normalize_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Strip, lower-case, drop empties and duplicates, sort."""
    return tuple(sorted({t.strip().lower() for t in tags if t and t.strip()}))


def normalize_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """Strip, drop empties and duplicates, sort (case is kept: module names are identifiers)."""
    return tuple(sorted({t.strip() for t in targets if t and t.strip()}))


def target_key(targets: Iterable[str]) -> str:
    """One string per target set, so 'same targets' is an indexed equality."""
    return ",".join(normalize_targets(targets))


def normalize_license(value: str | None) -> str | None:
    """Licence ids are compared lower-case ('Apache-2.0' == 'apache-2.0')."""
    if value is None:
        return None
    value = value.strip().lower()
    return value or None
