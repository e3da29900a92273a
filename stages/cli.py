"""The ``collector`` command: one sub-command per stage and tool.

Configuration errors end in exactly one line naming the variable and exit status 2, whatever
the command, so the group runs click in non-standalone mode and reports errors itself.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from pipeline.config import ConfigError

# sub-command name -> module exporting ``command``
COMMANDS = {
    "ingest": "stages.ingest",
    "check": "stages.check",
    "persist": "stages.persist",
    "archive": "stages.archive",
    "simulate": "stages.simulate",
    "run": "stages.run",
    "status": "stages.status",
    "query": "stages.query",
    "book": "stages.book",
    "report": "stages.report",
    "keygen": "stages.keygen",
}


class LazyGroup(click.Group):
    """Imports a sub-command's module only when it runs, so ``collector check`` never loads pyarrow."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, module in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None or importlib.util.find_spec(module) is None:
            return None
        return importlib.import_module(module).command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """crypto-collector: records exchange order books and trades through ingest -> check -> persist -> archive."""


def main(argv: list[str] | None = None) -> None:
    try:
        result = cli.main(args=argv, prog_name="collector", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}".replace("\n", " "), err=True)
        sys.exit(exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
