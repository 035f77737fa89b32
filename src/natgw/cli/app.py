"""The `natgw` command: global options, and every command group registered.

Built on click rather than typer: typer coerces every parameter through
pydantic, whose import alone costs more than a read-only command may take.
"""

import click

from natgw.cli import check, gateway, keys, maps
from natgw.cli.options import Options

# Listed in this order by `natgw --help` (click would sort them by name).
COMMANDS = (check.version, check.check, keys.genkey, keys.pubkey,
            gateway.up, gateway.down, gateway.status, maps.maps, maps.lookup)


class _Ordered(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_Ordered, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--netns", metavar="NAME",
              help="Run in the named network namespace (as `ip netns exec NAME`).")
@click.pass_context
def app(ctx: click.Context, netns: str | None) -> None:
    """natgw: NAT gateway for overlapping networks."""
    ctx.obj = Options(netns=netns)


for _command in COMMANDS:
    app.add_command(_command)
