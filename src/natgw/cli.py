"""natgw command line: a thin layer over the library."""

import typer

app = typer.Typer(help="natgw: NAT gateway for overlapping networks", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print natgw's version."""
    from natgw import __version__

    typer.echo(__version__)
