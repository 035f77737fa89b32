"""The `natgw` command: global options, and every command group registered."""

from typing import Annotated

import typer

from natgw.cli import check, gateway, keys, maps
from natgw.cli.options import Options

# Locals are never shown in tracebacks: they may hold a private key.
app = typer.Typer(
    help="natgw: NAT gateway for overlapping networks",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    netns: Annotated[
        str | None,
        typer.Option(
            "--netns",
            metavar="NAME",
            help="Run in the named network namespace (as `ip netns exec NAME`).",
        ),
    ] = None,
) -> None:
    """natgw: NAT gateway for overlapping networks."""
    ctx.obj = Options(netns=netns)


# In the order `natgw --help` lists them.
for command in (check.version, check.check, keys.genkey, keys.pubkey,
                gateway.up, gateway.down, gateway.status, maps.maps, maps.lookup):
    app.command()(command)
