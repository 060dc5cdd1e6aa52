"""The embedder for commands that write task signatures when they can, and go on when not."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from registry.embedders import Embedder


def optional_embedder(what: str = "without a task signature") -> Embedder | None:
    """The configured embedder, or None with one warning line on stderr when there is none."""
    from registry.embedders import load_embedder_or_warn

    return load_embedder_or_warn(lambda line: click.echo(line, err=True), what)
