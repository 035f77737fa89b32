"""natgw's command line, a thin layer over the library.

One module per command group, none importing this package or app.py (so
there is no import cycle): gateway (up, down, status), maps (maps, lookup),
keys (genkey, pubkey), check (check, version). errors.py holds the exit
codes, options.py the global options; app.py assembles the `natgw` command.
Commands import the library they need when they run: read-only commands
answer quickly because nothing else (pydantic, pyroute2, prometheus_client,
bcc, YAML) is imported for them.
"""

from natgw.cli.app import app

__all__ = ["app"]
