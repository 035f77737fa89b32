"""natgw command line: a thin layer over the library.

Exit codes: 0 ok, 2 invalid file or usage (click's usage errors already exit 2),
1 runtime failure. Errors are one line on stderr, never a traceback.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from natgw import keys
from natgw.config import ConfigError, load_config

EXIT_RUNTIME = 1
EXIT_INVALID = 2

# Locals are never shown in tracebacks: they may hold a private key.
app = typer.Typer(
    help="natgw: NAT gateway for overlapping networks",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@dataclass(frozen=True)
class Options:
    """Global options, stored in the typer context's `obj` for every command."""

    netns: str | None = None


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    """Print one error line on stderr and exit with `code`."""
    typer.echo(f"natgw: {message}", err=True)
    raise typer.Exit(code)


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


@app.command()
def version() -> None:
    """Print natgw's version."""
    from natgw import __version__

    typer.echo(__version__)


@app.command()
def check(file: Annotated[Path, typer.Argument(help="cluster.yaml to validate")]) -> None:
    """Validate a cluster.yaml without changing anything."""
    try:
        cfg = load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)
    n = len(cfg.peers)
    hub = ""
    if cfg.hub is not None:
        k = len(cfg.hub.clients)
        hub = f", a hub with {k} client{'' if k == 1 else 's'}"
    typer.echo(f"{file}: ok ({n} peer{'' if n == 1 else 's'}{hub})")


@app.command()
def genkey() -> None:
    """Print a new private key (like `wg genkey`)."""
    typer.echo(keys.genkey())


@app.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key (like `wg pubkey`)."""
    try:
        typer.echo(keys.pubkey(sys.stdin.read()))
    except ValueError as e:
        fail(str(e), EXIT_INVALID)


# Gateway commands (up, down, status) live in their own module.
from natgw.cli_gateway import register as _register_gateway  # noqa: E402

_register_gateway(app)

from natgw.cli_inspect import register as _register_inspect  # noqa: E402

_register_inspect(app)

from natgw.cli_hub import register as _register_hub  # noqa: E402

_register_hub(app)
