"""`natgw up`, `down`, `status`: the gateway commands (thin over natgw.gateway)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
import yaml

from natgw.config import ConfigError, GatewayConfig, load_config

SUPERVISE_INTERVAL = 2.0  # seconds between checks of the tunnel engines

log = logging.getLogger("natgw")


def _load(file: Path) -> GatewayConfig:
    from natgw.cli import EXIT_INVALID, fail  # noqa: PLC0415

    try:
        return load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)


def _gateway_name(file: Path) -> str:
    """The gateway a file names, or the argument itself as a name.

    Only `name:` is read: down and status must work even when the rest of the
    file no longer validates (a key file gone, an edit half done).
    """
    from natgw.cli import EXIT_INVALID, fail  # noqa: PLC0415

    if not file.exists():
        return str(file)
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"{file}: {e}".splitlines()[0], EXIT_INVALID)
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        fail(f"{file}: name: field required", EXIT_INVALID)
    return name


def _apply(gw, quiet: bool = False) -> None:
    from natgw.cli import fail  # noqa: PLC0415
    from natgw.gateway import GatewayError  # noqa: PLC0415

    try:
        report = gw.apply()
    except GatewayError as e:
        fail(str(e))
    if not quiet:
        parts = [f"{k} {_names(v)}" for k, v in asdict(report).items() if v]
        typer.echo(f"natgw: gateway {gw.cfg.name} up" + (f" ({'; '.join(parts)})"
                                                        if parts else ""))


def _names(names: list[str], most: int = 10) -> str:
    """A list of peer and client names, shortened: a hub may have a thousand."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(help="cluster.yaml")],
        detach: Annotated[bool, typer.Option("--detach", help="Apply and return.")] = False,
    ) -> None:
        """Bring the gateway to what FILE says: tunnels, dataplane, mappings, routes.

        In the foreground natgw serves metrics, restarts dead wireguard-go
        processes, reloads FILE on SIGHUP, and exits on SIGTERM/SIGINT leaving
        the dataplane forwarding.
        """
        from natgw.gateway import Gateway  # noqa: PLC0415

        netns = ctx.obj.netns
        gw = Gateway(_load(file), netns, file)
        _apply(gw)
        if detach:
            return
        _foreground(gw, file, netns)

    @app.command()
    def down(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(help="cluster.yaml (or the gateway name)")],
    ) -> None:
        """Remove everything `up` made: devices, filters, qdiscs, routes, pins, processes."""
        from natgw.cli import fail  # noqa: PLC0415
        from natgw.gateway import GatewayError  # noqa: PLC0415
        from natgw.gateway import down as gw_down  # noqa: PLC0415

        name = _gateway_name(file)
        try:
            removed = gw_down(name, ctx.obj.netns)
        except GatewayError as e:
            fail(str(e))
        typer.echo(f"natgw: gateway {name} " + ("down" if removed else "was not up"))

    @app.command()
    def status(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(help="cluster.yaml (or the gateway name)")],
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Per peer and hub client: device, endpoint, handshake, transfer, routes, mappings."""
        from natgw.cli import fail  # noqa: PLC0415
        from natgw.gateway import GatewayError, format_status  # noqa: PLC0415
        from natgw.gateway import status as gw_status  # noqa: PLC0415
        from natgw.hub import format_hub, read_hub_status  # noqa: PLC0415

        name = _gateway_name(file)
        try:
            reports = gw_status(name, ctx.obj.netns)
        except GatewayError as e:
            fail(str(e))
        hub = read_hub_status(name, ctx.obj.netns)
        if as_json:
            doc = {"gateway": name, "peers": [asdict(r) for r in reports]}
            if hub is not None:
                doc["hub"] = asdict(hub)
            typer.echo(json.dumps(doc, indent=2))
        else:
            lines = [format_status(name, reports), *(format_hub(hub) if hub else [])]
            typer.echo("\n".join(lines))


def _foreground(gw, file: Path, netns: str | None) -> None:
    """Supervise until SIGTERM/SIGINT; SIGHUP reloads the file."""
    from natgw.gateway import Gateway, GatewayError  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="natgw: %(message)s")
    stop = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    server = _start_metrics(gw)
    log.info("running in the foreground (SIGHUP reloads %s)", file)
    try:
        while not stop.wait(SUPERVISE_INTERVAL):
            try:
                if reload.is_set():
                    reload.clear()
                    try:
                        gw = Gateway(load_config(file), netns, file)
                    except ConfigError as e:
                        log.error("reload: %s (keeping the running config)", e)
                        continue
                    gw.apply()
                    log.info("reloaded %s", file)
                elif dead := gw.dead_tunnels():
                    log.warning("engine of %s died: restarting", ", ".join(dead))
                    gw.apply()
            except GatewayError as e:
                log.error("%s", e)
    finally:
        if server is not None:
            server.shutdown()
    log.info("exiting; the dataplane keeps forwarding (natgw down removes it)")


def _start_metrics(gw):
    """Serve Prometheus metrics at the config's `metrics` address, if natgw.metrics exists."""
    try:
        from natgw.metrics import serve_gateway_metrics  # noqa: PLC0415
    except ImportError:
        return None
    try:
        return serve_gateway_metrics(gw)
    except OSError as e:
        log.error("metrics: cannot listen on %s: %s", gw.cfg.metrics, e)
        return None
