"""`natgw check` and `natgw version`: about a file and the program, nothing running needed."""

from pathlib import Path

import click

from natgw.cli.errors import EXIT_INVALID, fail


@click.command()
def version() -> None:
    """Print natgw's version."""
    from natgw import __version__  # noqa: PLC0415

    click.echo(__version__)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
def check(file: Path) -> None:
    """Validate FILE (a cluster.yaml); changes nothing."""
    # pydantic and YAML are loaded only by the commands that read a config.
    from natgw.config import ConfigError, load_config  # noqa: PLC0415

    try:
        cfg = load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)
    n = len(cfg.peers)
    click.echo(f"{file}: ok ({n} peer{'' if n == 1 else 's'})")
