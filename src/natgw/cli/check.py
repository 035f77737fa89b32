"""`natgw check` and `natgw version`: about a file and the program, nothing running needed."""

from pathlib import Path
from typing import Annotated

import typer

from natgw.cli.errors import EXIT_INVALID, fail


def version() -> None:
    """Print natgw's version."""
    from natgw import __version__  # noqa: PLC0415

    typer.echo(__version__)


def check(file: Annotated[Path, typer.Argument(help="cluster.yaml to validate")]) -> None:
    """Validate a cluster.yaml without changing anything."""
    # pydantic and YAML are loaded only by the commands that read a config.
    from natgw.config import ConfigError, load_config  # noqa: PLC0415

    try:
        cfg = load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)
    n = len(cfg.peers)
    typer.echo(f"{file}: ok ({n} peer{'' if n == 1 else 's'})")
