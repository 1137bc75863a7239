"""The ``xportrait`` command line: a thin Typer front end over the library.

Each command parses its options, calls one library function and renders the result. Known errors
(:class:`xportrait_cli.errors.XPortraitError`) print one line on stderr and exit with their code
(1, or 2 for usage errors); Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from xportrait_cli.errors import XPortraitError

app = typer.Typer(
    name="xportrait",
    help="Animate a portrait photo with the motion of a driving video (X-Portrait).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _root() -> None:
    """Animate a portrait photo with the motion of a driving video (X-Portrait)."""


def main() -> None:
    """Console-script entry point: run the app and map known errors to exit codes."""
    try:
        app(standalone_mode=False)
    except XPortraitError as exc:
        err_console.print(f"error: {exc.one_line()}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        sys.exit(exc.code if isinstance(exc, SystemExit) else code)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
