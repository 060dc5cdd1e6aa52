"""Model cards: ``README.md`` split into YAML front matter and a Markdown body.

The one front-matter parser: ``loradex add``, the Hub sync, publish and the built-in Hub all read
a card through it, so they agree on what a card says. A UTF-8 byte-order mark and CRLF line ends
(cards written on Windows) are accepted; YAML aliases and deep nesting are refused
(:func:`loradex.documents.parse_yaml`).
"""

from __future__ import annotations

import re
from typing import Any

from loradex.documents import MalformedDocument, parse_yaml
from loradex.errors import InvalidAdapter

__all__ = ["CARD", "first_paragraph", "parse_card", "parse_front_matter"]

CARD = "README.md"

_OPENING = re.compile(r"^---[ \t]*(?:\r?\n|$)")
_FRONT_MATTER = re.compile(r"^---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*(?:\r?\n|$)", re.S | re.M)


def _split(text: str) -> tuple[str | None, str, bool]:
    """(front-matter YAML or None, body, whether a front matter was opened and never closed)."""
    text = text.lstrip("\ufeff")
    match = _FRONT_MATTER.match(text)
    if not match:
        return None, text.strip(), bool(_OPENING.match(text))
    return match.group(1), text[match.end() :].strip(), False


def _mapping(yaml_text: str) -> dict[str, Any]:
    """The front matter as a dict; MalformedDocument for bad YAML or YAML that is not a mapping."""
    data = parse_yaml(yaml_text) or {}
    if not isinstance(data, dict):
        raise MalformedDocument("not a mapping")
    return data


def parse_card(text: str | None) -> tuple[dict[str, Any], str]:
    """Split a model card into (YAML front matter as a dict, Markdown body).

    A card without front matter gives ``({}, text)``. Malformed YAML raises
    :class:`InvalidAdapter`: a card that says something we cannot read is better refused
    than silently indexed without its licence or base model.
    """
    if not text:
        return {}, ""
    yaml_text, body, _ = _split(text)
    if yaml_text is None:
        return {}, body
    try:
        return _mapping(yaml_text), body
    except MalformedDocument as exc:
        raise InvalidAdapter(f"{CARD}: YAML front matter is malformed ({exc})") from exc


def parse_front_matter(text: str) -> dict[str, Any]:
    """The front matter of a README as a dict ({} when absent); ValueError when invalid.

    Stricter than :func:`parse_card`, for the Hub's ``validate-yaml``: a README that opens a
    front matter and never closes it is refused rather than read as all body.
    """
    yaml_text, _, unclosed = _split(text)
    if unclosed:
        raise ValueError("YAML front matter is not closed by a '---' line")
    if yaml_text is None:
        return {}
    try:
        return _mapping(yaml_text)
    except MalformedDocument as exc:
        raise ValueError(f"invalid YAML front matter: {exc}") from None


# What card templates leave in place of the author's words: huggingface_hub's model card
# template (used by PEFT and transformers) fills every field it was not given with this.
_PLACEHOLDER = "[More Information Needed]"
_TEMPLATE_SENTENCES = (
    "This is the model card of a 🤗 transformers model that has been pushed on the Hub.",
    "This model card has been automatically generated.",
    "Users (both direct and downstream) should be made aware of the risks, biases and "
    "limitations of the model.",
    "More information needed for further recommendations.",
    "Use the code below to get started with the model.",
    "Carbon emissions can be estimated using the [Machine Learning Impact calculator]"
    "(https://mlco2.github.io/impact#compute) presented in [Lacoste et al. (2019)]"
    "(https://arxiv.org/abs/1910.09700).",
)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
# "**BibTeX:**", "**APA:**": the template's labels of empty fields.
_LABEL_ONLY = re.compile(r"^\*\*[^*]+\*\*:?$")
# "- PEFT 0.13.2" under the template's "Framework versions": a version list, not prose.
_FRAMEWORK_LINE = re.compile(
    r"^-\s*(peft|transformers|pytorch|torch|datasets|tokenizers|trl|accelerate)\s+v?\d", re.I
)


def first_paragraph(body: str) -> str | None:
    """The first paragraph of prose in a card body (headings, tables, code, images, HTML
    comments and template placeholders skipped)."""
    body = _HTML_COMMENT.sub("", body)
    for sentence in _TEMPLATE_SENTENCES:
        body = body.replace(sentence, "")
    for block in re.split(r"\n\s*\n", body):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("#", "|", "```", "!["))
                 and _PLACEHOLDER not in ln and not _FRAMEWORK_LINE.match(ln)
                 and not _LABEL_ONLY.match(ln)]
        if lines:
            return " ".join(lines)[:1000]
    return None
