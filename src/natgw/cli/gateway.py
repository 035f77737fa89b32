"""`natgw up`, `down`, `status`: the gateway commands (thin over natgw.gateway, natgw.status).

`status` is read-only and imports only natgw.status; `up` and `down` load
the rest (config validation, netlink, the compiler) when they run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from natgw.cli.errors import EXIT_INVALID, fail
from natgw.cli.options import netns_of

if TYPE_CHECKING:
    from natgw.config import GatewayConfig
    from natgw.gateway import Gateway

# Arguments are typer.Argument(hidden=True): each command's docstring describes
# them; hidden drops only typer's "Arguments:" list (the usage line keeps them).

SUPERVISE_INTERVAL = 2.0  # seconds between drift checks (and retries of a failed reload)
# Seconds between checks that each wireguard-go still runs (a pid file, /proc and a
# socket: cheap), so that a dead one is restarted well within SUPERVISE_INTERVAL.
ENGINE_INTERVAL = 0.5
NOTHING_RUNNING = "no natgw gateway is running"


def _load(file: Path) -> GatewayConfig:
    from natgw.config import ConfigError, load_config  # noqa: PLC0415

    try:
        return load_config(file)
    except ConfigError as e:
        fail(str(e), EXIT_INVALID)


def _gateway_name(file: Path) -> str:
    """The gateway a file names, or the argument itself as a name.

    Only `name:` is read: down and status must work even when the rest of the
    file no longer validates (a key file gone, an edit half done).
    """
    if not file.exists():
        import re  # noqa: PLC0415

        # The gateway-name rule of natgw.config (a plain name: no "/", no "..").
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(file)):
            fail(f"{file}: no such file, and not a gateway name", EXIT_INVALID)
        return str(file)
    import yaml  # noqa: PLC0415 - only a FILE argument needs YAML

    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"{file}: {e}".splitlines()[0], EXIT_INVALID)
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        fail(f"{file}: name: field required", EXIT_INVALID)
    return name


def _names(names: list[str], most: int = 10) -> str:
    """Peer and hub client names, shortened: a hub may have a thousand."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def _apply(gw: Gateway, quiet: bool = False) -> None:
    from natgw.gateway import GatewayError  # noqa: PLC0415

    try:
        report = gw.apply()
    except GatewayError as e:
        fail(str(e))
    if not quiet:
        parts = [f"{k} {_names(v)}" for k, v in asdict(report).items() if v]
        typer.echo(f"natgw: gateway {gw.cfg.name} up" + (f" ({'; '.join(parts)})"
                                                        if parts else ""))


def up(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(hidden=True)],
    detach: Annotated[bool, typer.Option("--detach", help="Apply and return.")] = False,
) -> None:
    """Apply FILE (cluster.yaml): tunnels, dataplane, mappings, routes.

    In the foreground natgw serves the file's pipes and metrics, restarts dead
    wireguard-go processes, probes a replica group's silent members, takes the ones
    still silent or down out of its route and puts them back, reloads FILE on SIGHUP,
    and exits on SIGTERM/SIGINT leaving the dataplane forwarding (pipes stop; groups route over
    every member again, as with --detach, which checks no health). With a foreground natgw up
    serving this gateway, --detach hands FILE over to it (SIGHUP, and waits);
    without one, --detach refuses a file with pipes.
    """
    from natgw.gateway import Gateway  # noqa: PLC0415
    from natgw.pipes import publish  # noqa: PLC0415

    netns = ctx.obj.netns
    cfg = _load(file)
    serving = publish.read(cfg.name)
    if serving is not None:
        if not detach:
            fail(f"gateway {cfg.name} is already served by natgw up (pid {serving['pid']}); "
                 f"natgw up --detach {file} (or kill -HUP {serving['pid']}) reloads it")
        _hand_over(serving, file, netns)
        return
    if detach and cfg.pipes:
        fail("pipes need the foreground natgw up, which is their proxy: run natgw up "
             "without --detach (e.g. as a service); while it runs, up --detach hands the "
             "file over to it")
    gw = Gateway(cfg, netns, file)
    # In the foreground, SIGTERM/SIGINT/SIGHUP during the first apply are kept for
    # the loop: the apply finishes (or rolls back) instead of dying half-way.
    signals = None if detach else _catch_signals()
    _apply(gw)
    if signals is None:
        return
    _foreground(gw, file, netns, *signals)


def down(ctx: typer.Context, file: Annotated[Path, typer.Argument(hidden=True)]) -> None:
    """Remove what `up` made: devices, filters, routes, pins, processes.

    FILE is the cluster.yaml, or the gateway's name.
    """
    from natgw.gateway import GatewayError  # noqa: PLC0415
    from natgw.gateway import down as gw_down  # noqa: PLC0415

    name = _gateway_name(file)
    try:
        removed = gw_down(name, ctx.obj.netns)
    except GatewayError as e:
        fail(str(e))
    typer.echo(f"natgw: gateway {name} " + ("down" if removed else "was not up"))


def status(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(hidden=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", "-j", help="JSON list of gateways.")]
    = False,
) -> None:
    """Show running gateways, like `wg show`.

    Per gateway and peer: device, engine, endpoint, handshake, transfer,
    routes, mappings; for a hub, the same per client, with its address.

    Without FILE (a cluster.yaml or a gateway name), like `wg show`: every
    gateway natgw runs in the netns (--netns, else natgw's own), or "no natgw
    gateway is running" (exit 0; --json prints []).
    """
    from natgw import status as st  # noqa: PLC0415

    netns = netns_of(ctx)
    name = _gateway_name(file) if file is not None else None
    try:
        # A named gateway is found wherever it runs unless --netns says where.
        reports = st.status(name, netns, any_netns=ctx.obj.netns is None)
    except st.StatusError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(st.to_json(reports), indent=2))
    elif reports:
        typer.echo(st.format_status(reports))
    else:
        typer.echo(NOTHING_RUNNING + (f" in netns {netns}" if netns else ""))


HANDOVER_TIMEOUT = 60.0  # seconds `up --detach` waits for the serving process to reload


def _hand_over(serving: dict, file: Path, netns: str | None) -> None:
    """Make the foreground `natgw up` serving this gateway reload FILE (SIGHUP), and wait."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from natgw.pipes import publish  # noqa: PLC0415

    pid, name = serving["pid"], serving["gateway"]
    if serving.get("config") != str(file.resolve()):
        fail(f"gateway {name} is served by natgw up (pid {pid}) from {serving.get('config')}; "
             "edit that file, or stop that process first")
    if serving.get("netns") != netns:
        fail(f"gateway {name} is served in netns {serving.get('netns') or '(default)'}: "
             "pass --netns accordingly")
    before = serving["reloads"]
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while time.monotonic() < deadline:
        now = publish.read(name)
        if now is None:
            fail(f"natgw up (pid {pid}) serving gateway {name} exited during the reload")
        if now["reloads"] > before:
            if now["reload_error"]:
                fail(f"natgw up (pid {pid}): {now['reload_error']}")
            typer.echo(f"natgw: gateway {name} up (reloaded by natgw up, pid {pid})")
            return
        time.sleep(0.05)
    fail(f"natgw up (pid {pid}) did not reload gateway {name} within {HANDOVER_TIMEOUT:.0f} s")


def _catch_signals():
    """(stop, reload, wake) events set by SIGTERM/SIGINT and SIGHUP from now on.

    wake is set by either: the loop acts at once, not at its next tick.
    """
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    stop = threading.Event()
    reload = threading.Event()
    wake = threading.Event()

    def on(event: threading.Event) -> None:
        event.set()
        wake.set()

    signal.signal(signal.SIGTERM, lambda *_: on(stop))
    signal.signal(signal.SIGINT, lambda *_: on(stop))
    signal.signal(signal.SIGHUP, lambda *_: on(reload))
    return stop, reload, wake


def _foreground(gw: Gateway, file: Path, netns: str | None, stop, reload, wake) -> None:
    """Serve the pipes and supervise until SIGTERM/SIGINT; SIGHUP reloads the file.

    The replica groups' members are judged in a thread of their own
    (natgw.health_ticker), every ENGINE_INTERVAL the engines are checked, and every
    SUPERVISE_INTERVAL
    (or as soon as a wireguard-go is found dead): a reload that failed (e.g. it
    met a dying engine) is tried again; a newer apply by another `natgw up` is
    adopted, never reverted; drift (a pin, engine, device, filter, route,
    mapping entry, allowed-ip or pipe address removed by hand) is repaired to
    what was last applied, with one log line each time, and the pipes listen
    again on recreated devices; otherwise stale hostname endpoints are looked
    up again.
    """
    import logging  # noqa: PLC0415 - only the foreground logs
    import time  # noqa: PLC0415

    from natgw.config import ConfigError, load_config  # noqa: PLC0415
    from natgw.dataplane.hooks import LinkHolder  # noqa: PLC0415
    from natgw.dataplane.loader import pin_dir  # noqa: PLC0415
    from natgw.failure import one_line  # noqa: PLC0415
    from natgw.gateway import Gateway, GatewayError  # noqa: PLC0415
    from natgw.health_ticker import HealthTicker  # noqa: PLC0415
    from natgw.pipes import publish  # noqa: PLC0415
    from natgw.pipes.server import PipeServer, plan_for  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="natgw: %(message)s")
    log = logging.getLogger("natgw")
    name = gw.cfg.name
    pipes = PipeServer(netns, publish=publish.write)
    try:
        pipes.start()
    except OSError as e:
        fail(f"pipes: {e}")
    errors = pipes.apply(plan_for(gw.cfg, gw.config_path))
    if errors:
        pipes.stop()
        publish.remove(name)
        fail(errors[0])
    server = _start_metrics(gw)
    if server is not None:
        from natgw.pipes.metrics import PipeCollector  # noqa: PLC0415

        server.registry.register(PipeCollector(pipes))
    # The tcx links stay open here: a link pin removed by hand then detaches nothing
    # (with --detach the pin is a link's only holder), and drift repair pins it again.
    links = LinkHolder()
    links.refresh(pin_dir(name))
    log.info("running in the foreground (SIGHUP reloads %s)", file)
    gw.watch_health()
    ticker = HealthTicker(gw)
    ticker.start()
    pending = False  # a SIGHUP not yet applied: kept until it succeeds or the file is invalid
    next_check = time.monotonic() + SUPERVISE_INTERVAL
    try:
        while not stop.is_set():
            wake.wait(ENGINE_INTERVAL)  # a signal wakes it at once
            wake.clear()
            if stop.is_set():
                break
            try:
                if reload.is_set():
                    reload.clear()
                    pending, next_check = True, 0.0
                now = time.monotonic()
                if now < next_check and not gw.dead_tunnels():
                    continue
                next_check = now + SUPERVISE_INTERVAL
                if pending:
                    try:
                        new = Gateway(load_config(file), netns, file)
                    except ConfigError as e:
                        pending = False
                        log.error("reload: %s (keeping the running config)", e)
                        pipes.set_reload(f"reload: {e}")
                        continue
                    with ticker.paused():
                        new.watch_health(gw.health)
                        try:
                            new.apply()  # GatewayError: pending, tried again next check
                        except GatewayError:
                            gw.resync_health()  # the restored configuration has every member in
                            raise
                        gw, pending = new, False
                        ticker.gateway = gw
                    errors = pipes.apply(plan_for(gw.cfg, gw.config_path))
                    for e in errors:
                        log.error("reload: %s", e)
                    pipes.set_reload("; ".join(errors) or None)
                    log.info("reloaded %s", file)
                elif gw.superseded():
                    with ticker.paused():
                        adopted = gw.adopt_record()
                        if adopted:
                            gw.watch_health(gw.health)
                    if adopted:
                        log.info("supervising the configuration another natgw up applied")
                elif drift := gw.drift():
                    if gw.repair(drift):
                        log.warning("drift repaired: %s", "; ".join(drift))
                    # A repaired tunnel may be a new device: listen on it again.
                    for e in pipes.apply(plan_for(gw.cfg, gw.config_path)):
                        log.error("%s", e)
                else:
                    gw.reresolve_stale()
                links.refresh(pin_dir(name))
            except GatewayError as e:
                log.error("%s", e)
            except Exception as e:  # noqa: BLE001 - the supervisor must keep running
                log.error("%s", one_line(e))
    finally:
        ticker.stop()
        links.close()
        try:
            for line in gw.release_health():
                log.error("%s", line)
        except Exception as e:  # noqa: BLE001 - exiting anyway
            log.error("health: %s", one_line(e))
        if server is not None:
            server.shutdown()
        pipes.stop()
        publish.remove(name)
    log.info("exiting; the dataplane keeps forwarding, pipes stop%s (natgw down removes it "
             "all)", ", replica groups route over every member, unchecked" if gw.cfg.groups
             else "")


def _start_metrics(gw: Gateway):
    """Serve Prometheus metrics at the config's `metrics` address."""
    import logging  # noqa: PLC0415

    from natgw.metrics import serve_gateway_metrics  # noqa: PLC0415

    try:
        return serve_gateway_metrics(gw)
    except OSError as e:
        logging.getLogger("natgw").error("metrics: cannot listen on %s: %s", gw.cfg.metrics, e)
        return None
