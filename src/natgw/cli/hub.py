"""`natgw client-config`: a wg-quick file for a plain WireGuard client of a hub."""

from pathlib import Path
from typing import Annotated

import typer

from natgw.cli.errors import EXIT_INVALID, fail


def client_config(
    file: Annotated[Path, typer.Argument(hidden=True)],
    client: Annotated[str, typer.Argument(hidden=True)],
    genkey: Annotated[bool, typer.Option(
        "--genkey", help="Make a key pair: the private key goes into the config, the "
                         "publicKey: line for the hub's file to stderr.")] = False,
) -> None:
    """Print a wg-quick configuration for CLIENT (a name in hub.clients) of the hub in FILE."""
    from natgw import keys  # noqa: PLC0415
    from natgw.clientconfig import ClientConfigError, render  # noqa: PLC0415
    from natgw.config import ConfigError, load_config  # noqa: PLC0415
    from natgw.pool import PoolError  # noqa: PLC0415

    try:
        cfg = load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)
    private = keys.genkey() if genkey else None
    try:
        text = render(cfg, client, private)
    except ClientConfigError as e:
        fail(str(e), EXIT_INVALID)
    except PoolError as e:
        fail(str(e))
    typer.echo(text, nl=False)
    if private is not None:
        typer.echo(f"publicKey: {keys.pubkey(private)}   # for {client} in hub.clients", err=True)
