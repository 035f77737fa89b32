"""The global options every command sees (`natgw --netns NAME ...`)."""

from dataclasses import dataclass

import typer

from natgw.cli.errors import EXIT_RUNTIME, fail


@dataclass(frozen=True)
class Options:
    """Global options, stored in the typer context's `obj` for every command."""

    netns: str | None = None


def netns_of(ctx: typer.Context) -> str | None:
    """The --netns of the command line, which must exist (exit 1 otherwise)."""
    from natgw.netns import NetnsNotFound, require_netns  # noqa: PLC0415

    netns = getattr(ctx.obj, "netns", None)
    try:
        require_netns(netns)
    except (NetnsNotFound, ValueError) as e:
        fail(str(e), EXIT_RUNTIME)
    return netns
