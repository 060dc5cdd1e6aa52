"""Model cards: README.md with YAML front matter that the Hub and the registry both read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml


def render_card(front_matter: Mapping[str, Any], title: str, body: str) -> str:
    """A README.md: ``---`` YAML front matter ``---``, a title and a markdown body."""
    yaml_text = yaml.safe_dump(dict(front_matter), sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{yaml_text}---\n\n# {title}\n\n{body.strip()}\n"


def settings_table(settings: Mapping[str, Any]) -> str:
    """A two-column markdown table of settings."""
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in settings.items()]
    return "\n".join(lines)
