"""The ``loradex`` command line: the top layer, which parses options and calls the others."""

from loradex.cli.main import COMMANDS, cli, main

__all__ = ["COMMANDS", "cli", "main"]
