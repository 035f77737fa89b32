"""The `natgw` command: global options, and every command group registered.

typer is pinned below 0.26 (pyproject.toml): later versions coerce every
parameter through pydantic, whose import alone costs more than a read-only
command may take. The typer kept here imports neither pydantic nor rich to
start; help and usage errors are click's plain text (rich_markup_mode=None),
so rich is not loaded for them either.
"""

from typing import Annotated

import typer

from natgw.cli import check, gateway, keys, maps
from natgw.cli.options import Options


class _App(typer.Typer):
    """The natgw app: an exception no command turned into an error is still one line.

    Never a traceback: besides being noise, one could show a private key.
    """

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            import sys  # noqa: PLC0415

            from natgw.cli.errors import EXIT_RUNTIME  # noqa: PLC0415
            from natgw.failure import one_line  # noqa: PLC0415

            print(f"natgw: internal error: {one_line(e)}", file=sys.stderr)
            sys.exit(EXIT_RUNTIME)


app = _App(
    no_args_is_help=True,
    add_completion=False,  # no --install-completion: natgw ships no shell hooks
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    # Locals are never shown in tracebacks: they may hold a private key.
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    netns: Annotated[str | None, typer.Option(
        "--netns", metavar="NAME", show_default=False,
        help="Run in the named network namespace (as `ip netns exec NAME`).")] = None,
) -> None:
    """natgw: NAT gateway for overlapping networks."""
    ctx.obj = Options(netns=netns)


# Listed in this order by `natgw --help`.
for _command in (check.version, check.check, keys.genkey, keys.pubkey,
                 gateway.up, gateway.down, gateway.status, maps.maps, maps.lookup):
    app.command()(_command)
