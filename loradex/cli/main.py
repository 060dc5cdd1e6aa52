"""The ``loradex`` command line.

Commands are loaded lazily (by name, from ``loradex.cli.commands.*``) so that ``loradex search``
never pays for torch or the server stack. Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from loradex import __version__
from loradex.errors import LoradexError
from loradex.files import storage_error
from loradex.settings import Settings

# name -> "module:attribute"; the module must import nothing heavy at top level.
COMMANDS: dict[str, str] = {
    "db": "loradex.cli.commands.db:db",
    "add": "loradex.cli.commands.registry_cmds:add",
    "search": "loradex.cli.commands.registry_cmds:search",
    "show": "loradex.cli.commands.registry_cmds:show",
    "serve": "loradex.cli.commands.hub_cmds:serve",
    "token": "loradex.cli.commands.hub_cmds:token",
    "sync": "loradex.cli.commands.hub_cmds:sync",
    "pull": "loradex.cli.commands.hub_cmds:pull",
    "publish": "loradex.cli.commands.hub_cmds:publish",
    "train": "loradex.cli.commands.composer_cmds:train",
    "compose": "loradex.cli.commands.composer_cmds:compose",
    "compose-batch": "loradex.cli.commands.compose_batch:compose_batch",
    "eval": "loradex.cli.commands.composer_cmds:eval_cmd",
    "library": "loradex.cli.commands.library_cmds:library",
    "demo": "loradex.cli.commands.demo:demo",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(self.lazy_commands)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="loradex")
@click.option("--db", envvar="LORADEX_DB", default=None, metavar="URL",
              help="Registry database: any SQLAlchemy URL (default: SQLite in the loradex home).")
@click.option("--home", envvar="LORADEX_HOME", default=None, metavar="DIR",
              help="loradex home folder (default: ~/.loradex).")
@click.pass_context
def cli(ctx: click.Context, db: str | None, home: str | None) -> None:
    """loradex: find, share and compose LoRA modules.

    \b
    Example:
      loradex search "past tense" --base-model HuggingFaceTB/SmolLM2-135M-Instruct
    """
    ctx.obj = Settings.resolve(db=db, home=home)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning loradex errors into one line and an exit code."""
    try:
        rc = cli.main(args=argv, prog_name="loradex", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LoradexError as exc:
        # Messages that quote a driver or parser can span lines (psycopg adds "Is the server
        # running...?" on a second one): the user gets one line whatever the source.
        click.echo("error: " + " ".join(part.strip() for part in str(exc).splitlines()), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        # A file a command read or wrote (permission, no space, a missing folder): one line.
        error = storage_error(exc)
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
