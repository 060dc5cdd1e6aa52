"""Parse JSON and YAML that came from outside (a client, a Hub, a file on disk) safely.

``json.loads`` and ``yaml.safe_load`` accept documents that are valid but hostile: nesting deep
enough to raise ``RecursionError`` (here or in the next function that walks the value), integers
too long for ``int()`` (a ``ValueError`` that is not a ``JSONDecodeError``), and YAML aliases
that expand a 1 KB model card into millions of nodes or into a value that contains itself. Every
such document gets one :class:`MalformedDocument` (a ``ValueError``) naming the problem, which
callers turn into their own typed error: a 400 in the server, ``InvalidAdapter`` for an adapter.
"""

from __future__ import annotations

import functools
import json
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting accepted. Adapter configs, safetensors headers and cards use 2-4 levels."""


class MalformedDocument(ValueError):
    """A JSON or YAML document that is invalid, or valid but refused (too deep, aliases)."""


def parse_json(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises only :class:`MalformedDocument`, and bounds the nesting."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise MalformedDocument(f"nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise MalformedDocument(_one_line(exc)) from None
    check_depth(value, max_depth)
    return value


def parse_yaml(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load`` without aliases (no expansion bombs, no self-containing values)."""
    import yaml  # only where YAML is read

    try:
        value = yaml.load(text, Loader=_no_alias_loader())
    except RecursionError:
        raise MalformedDocument(f"nested more than {max_depth} levels deep") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise MalformedDocument(_one_line(exc)) from None
    check_depth(value, max_depth)
    return value


def as_list(value: Any) -> list[str]:
    """A document field that may hold one value or a list (``tags: mit`` or ``tags: [a, b]``)
    as a list of strings; ``None`` and null items give nothing."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`MalformedDocument` when lists/dicts nest deeper than ``max_depth``."""
    # Iterative: a recursive walk would itself overflow on the values it is meant to refuse.
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise MalformedDocument(f"nested more than {max_depth} levels deep")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _one_line(exc: Exception, limit: int = 200) -> str:
    # PyYAML's messages span several lines and quote the source; keep what and where.
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(exc, "context", None)
        text = f"{context + ': ' if context else ''}{problem} (line {mark.line + 1}, column "
        text += f"{mark.column + 1})"
    else:
        text = " ".join(str(exc).split())
    return (text[: limit - 3] + "...") if len(text) > limit else text or type(exc).__name__


@functools.cache
def _no_alias_loader() -> type:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses ``*alias`` references (a card never needs them)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.events.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases (*{event.anchor}) are not accepted",
                    event.start_mark,
                )
            return super().compose_node(parent, index)

    return NoAliasLoader
