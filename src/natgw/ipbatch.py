"""Many link, address and route changes in one `ip -batch` run (iproute2).

A hub changes up to a route per client on one device. Through pyroute2 each
change is a Python-encoded netlink round trip and each netns socket a forked
helper (tens of ms); `ip -n NETNS -batch -` does them all in one process that
enters the netns once. Only for bulk work, and for what pyroute2 cannot do
(nexthop objects: natgw.multipath); single changes stay on pyroute2.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess

from natgw.routes import RTPROT_NATGW, RouteError

TIMEOUT = 30  # seconds, for thousands of lines on a loaded machine


def ip_argv(netns: str | None, *args: str) -> list[str]:
    return ["ip", *(["-n", netns] if netns else []), *args]


def run_batch(netns: str | None, lines: list[str], force: bool = False,
              family: str | None = None) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) in netns; family
    ("-4", "-6") applies to every line.

    force: go on after a failing line and ignore failures (for removals of
    what may already be gone). Otherwise the first failure raises RouteError
    naming the command.
    """
    if not lines:
        return
    argv = ip_argv(netns, *([family] if family else []), *(["-force"] if force else []),
                   "-batch", "-")
    try:
        done = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True,
                              text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteError(f"ip -batch: {e}") from None
    if done.returncode == 0 or force:
        return
    why = next((ln for ln in done.stderr.splitlines() if not ln.startswith("Command failed")),
               done.stderr.strip())
    m = re.search(r"Command failed -:(\d+)", done.stderr)
    what = lines[int(m.group(1)) - 1] if m and int(m.group(1)) <= len(lines) else "a command"
    raise RouteError(f"ip {what}: {why.removeprefix('RTNETLINK answers: ') or 'failed'}")


def link_index(netns: str | None, ifname: str) -> int:
    try:
        done = subprocess.run(ip_argv(netns, "-j", "link", "show", "dev", ifname),
                              capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteError(f"ip link show {ifname}: {e}") from None
    if done.returncode != 0:
        raise RouteError(f"device {ifname} not found")
    return int(json.loads(done.stdout)[0]["ifindex"])


def refuse_foreign_routes(netns: str | None, networks: list[str]) -> None:
    """RouteError if the main table has a route to exactly one of `networks` that is
    not natgw's (natgw.routes refuses to replace those, one route at a time; this is
    one `ip` run for a hub's thousand)."""
    if not networks:
        return
    wanted = {ipaddress.ip_network(n) for n in networks}
    for family in sorted({f"-{n.version}" for n in wanted}):
        try:
            done = subprocess.run(ip_argv(netns, "-N", "-j", family, "route", "show",
                                        "table", "main"),
                                  capture_output=True, text=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RouteError(f"ip route show: {e}") from None
        if done.returncode != 0:
            raise RouteError(f"ip route show: {done.stderr.strip() or 'failed'}")
        for r in json.loads(done.stdout or "[]"):
            try:
                dst = ipaddress.ip_network(r.get("dst", ""))
            except ValueError:
                continue  # "default" and the like: natgw routes no default
            proto = str(r.get("protocol", "boot"))
            if dst in wanted and proto != str(RTPROT_NATGW):
                raise RouteError(f"route {dst} exists (proto {proto}) and natgw did not "
                                 "create it")
