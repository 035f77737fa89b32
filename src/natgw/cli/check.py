"""`natgw check` and `natgw version`: about a file and the program, nothing running needed."""

from pathlib import Path
from typing import Annotated

import typer

from natgw.cli.errors import EXIT_INVALID, fail

# Arguments are typer.Argument(hidden=True): each command's docstring describes
# them; hidden drops only typer's "Arguments:" list (the usage line keeps them).


def version() -> None:
    """Print natgw's version."""
    from natgw import __version__  # noqa: PLC0415

    typer.echo(__version__)


def check(file: Annotated[Path, typer.Argument(hidden=True)]) -> None:
    """Validate FILE (a cluster.yaml); changes nothing."""
    # pydantic and YAML are loaded only by the commands that read a config.
    from natgw.config import ConfigError, load_config  # noqa: PLC0415

    try:
        cfg = load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)
    n = len(cfg.peers)
    typer.echo(f"{file}: ok ({n} peer{'' if n == 1 else 's'})")
