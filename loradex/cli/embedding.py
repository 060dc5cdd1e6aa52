"""The embedder for commands that write task signatures when they can, and go on when not."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from loradex.errors import ConfigError

if TYPE_CHECKING:
    from registry.embedders import Embedder


def optional_embedder(what: str = "without a task signature") -> Embedder | None:
    """The configured embedder, or None with one warning line when there is none."""
    from registry.embedders import load_embedder

    try:
        return load_embedder()
    except ConfigError as exc:
        click.echo(f"warning: {exc}; {what}", err=True)
        return None
