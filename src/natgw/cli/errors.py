"""natgw's exit codes, and the one way a command fails.

0 done, 2 invalid file or usage (typer's usage errors exit 2 too), 1 runtime
failure. An error is one line on stderr, "natgw: ...", never a traceback.
"""

from typing import NoReturn

import typer

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INVALID = 2


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    """Print one error line on stderr and exit with `code`."""
    typer.echo(f"natgw: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr that does not end the command."""
    typer.echo(f"natgw: {message}", err=True)
