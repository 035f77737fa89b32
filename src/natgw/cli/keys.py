"""`natgw genkey` and `natgw pubkey`: WireGuard keys, as `wg genkey` and `wg pubkey`."""

import sys

import typer

from natgw.cli.errors import EXIT_INVALID, fail


def genkey() -> None:
    """Print a new private key (like `wg genkey`)."""
    from natgw import keys  # noqa: PLC0415

    typer.echo(keys.genkey())


def pubkey() -> None:
    """Print the public key of the private key on stdin (like `wg pubkey`)."""
    from natgw import keys  # noqa: PLC0415

    try:
        typer.echo(keys.pubkey(sys.stdin.read()))
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
