"""Task files and prompts: strict JSONL loading, one prompt renderer, tokenisation with masks.

A task file is JSON Lines, one object per line: ``{"input": str, "target": str}`` and optionally
``"choices": [str, ...]`` (the target must then be one of them). :func:`render_prompt` is the only
place a prompt is built, so train, compose and eval see the same text: with the tokenizer's chat
template when it has one (``use_chat_template=False`` turns it off), else plain text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradex.documents import MalformedDocument, parse_json
from loradex.errors import InvalidDataFile
from loradex.files import atomic_write

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_ALLOWED_KEYS = {"input", "target", "choices"}


@dataclass(frozen=True)
class Example:
    """One task example: a prompt input, its target text and optional answer choices."""

    input: str
    target: str
    choices: tuple[str, ...] | None = None


def load_examples(path: str | Path, *, min_examples: int = 1) -> list[Example]:
    """Read and validate a JSONL task file; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidDataFile(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDataFile(f"{path}: not UTF-8 text ({exc.reason})") from None
    examples: list[Example] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = parse_json(line)
        except MalformedDocument as exc:
            raise InvalidDataFile(f"{where}: not valid JSON ({exc})") from None
        examples.append(_parse_example(obj, where))
    if len(examples) < min_examples:
        what = "no examples" if not examples else f"only {len(examples)} example(s)"
        raise InvalidDataFile(f"{path}: {what}; at least {min_examples} needed")
    return examples


def write_examples(path: str | Path, examples: Sequence[Example]) -> None:
    """Write ``examples`` as a JSONL task file that :func:`load_examples` reads back
    (atomically: a stopped write leaves no half file)."""
    lines = []
    for ex in examples:
        obj: dict[str, Any] = {"input": ex.input, "target": ex.target}
        if ex.choices is not None:
            obj["choices"] = list(ex.choices)
        lines.append(json.dumps(obj, ensure_ascii=False))
    text = "".join(line + "\n" for line in lines)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _parse_example(obj: Any, where: str) -> Example:
    if not isinstance(obj, dict):
        raise InvalidDataFile(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _ALLOWED_KEYS
    if unknown:
        raise InvalidDataFile(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: input, target, choices"
        )
    for key in ("input", "target"):
        if key not in obj:
            raise InvalidDataFile(f"{where}: missing {key!r}")
        if not isinstance(obj[key], str):
            raise InvalidDataFile(f"{where}: {key!r} must be a string")
    if not obj["target"].strip():
        raise InvalidDataFile(f"{where}: 'target' is empty")
    choices = obj.get("choices")
    if choices is not None:
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise InvalidDataFile(
                f"{where}: 'choices' must be a list of at least 2 non-empty strings"
            )
        if obj["target"] not in choices:
            raise InvalidDataFile(f"{where}: 'target' {obj['target']!r} is not one of 'choices'")
        choices = tuple(choices)
    return Example(input=obj["input"], target=obj["target"], choices=choices)


def split_holdout(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split off a seeded random ``fraction`` of examples as a held-out set (at least one each)."""
    if not 0.0 < fraction < 1.0:
        raise InvalidDataFile(f"holdout fraction must be between 0 and 1, got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_hold = max(1, round(len(examples) * fraction))
    if n_hold >= len(examples):
        raise InvalidDataFile(f"{len(examples)} example(s) are too few to hold {fraction:.0%} out")
    held = sorted(order[:n_hold])
    kept = sorted(order[n_hold:])
    return [examples[i] for i in kept], [examples[i] for i in held]


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool = True) -> bool:
    """Whether prompts for this tokenizer are rendered with its chat template."""
    return bool(use_chat_template and getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    demonstrations: Sequence[Example] = (),
    use_chat_template: bool = True,
) -> str:
    """The prompt text for one input, with optional in-context demonstrations before it.

    With a chat template: one user/assistant turn per demonstration, then the user turn and
    the generation prompt. Without: ``input\\ntarget\\n\\n`` per demonstration, then ``input\\n``.
    """
    if uses_chat_template(tokenizer, use_chat_template):
        messages: list[dict[str, str]] = []
        for demo in demonstrations:
            messages.append({"role": "user", "content": demo.input})
            messages.append({"role": "assistant", "content": demo.target})
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    parts = [f"{demo.input}\n{demo.target}\n\n" for demo in demonstrations]
    return "".join(parts) + f"{text}\n"


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example: the prompt, and the target tokens the loss is taken on."""

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, use_chat_template: bool = True
) -> list[int]:
    """Token ids of a rendered prompt (special tokens come from the template when there is one)."""
    add_special = not uses_chat_template(tokenizer, use_chat_template)
    ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    return list(ids)


def encode_target(tokenizer: PreTrainedTokenizerBase, target: str, *, seq2seq: bool) -> list[int]:
    """Token ids of a target answer, ending with the end-of-sequence token."""
    ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(int(eos))
    return ids


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    demonstrations: Sequence[Example] = (),
    use_chat_template: bool = True,
) -> tuple[int, ...]:
    """Token ids of the whole prompt for one input (:func:`render_prompt`, then encoded)."""
    prompt = render_prompt(
        tokenizer, text, demonstrations=demonstrations, use_chat_template=use_chat_template
    )
    return tuple(encode_prompt(tokenizer, prompt, use_chat_template=use_chat_template))


def fit_example(
    prompt: Sequence[int], target: Sequence[int], *, seq2seq: bool, max_length: int | None
) -> EncodedExample:
    """A prompt and target within ``max_length``: the target cut to it, the prompt cut from
    the left so that the target fits after it (seq2seq: the encoder input alone)."""
    prompt, target = list(prompt), list(target)
    if max_length is not None:
        target = target[:max_length]
        room = max_length if seq2seq else max(0, max_length - len(target))
        if len(prompt) > room:
            prompt = prompt[len(prompt) - room :] if room else []
    return EncodedExample(tuple(prompt), tuple(target))


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    seq2seq: bool,
    max_length: int | None = None,
    use_chat_template: bool = True,
    demonstrations: Sequence[Example] = (),
) -> list[EncodedExample]:
    """Tokenise examples once. Long prompts are cut from the left so the target always fits."""
    return [
        fit_example(
            prompt_ids(tokenizer, ex.input, demonstrations=demonstrations,
                       use_chat_template=use_chat_template),
            encode_target(tokenizer, ex.target, seq2seq=seq2seq),
            seq2seq=seq2seq,
            max_length=max_length,
        )
        for ex in examples
    ]


def normalize_answer(text: str) -> str:
    """Normalise an answer for exact match: lower case, single spaces, no edge punctuation."""
    text = " ".join(text.strip().lower().split())
    return text.strip(" .,:;!?\"'`()[]")
