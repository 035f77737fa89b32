"""Many link, address and route changes in one `ip -batch` run (iproute2).

A hub changes up to a route per client on one device. Through pyroute2 each
change is a Python-encoded netlink round trip and each netns socket a forked
helper (tens of ms); `ip -n NETNS -batch -` does them all in one process that
enters the netns once. Only for bulk work: single changes stay on pyroute2.
"""

from __future__ import annotations

import json
import re
import subprocess

from natgw.routes import RouteError

TIMEOUT = 30  # seconds, for thousands of lines on a loaded machine


def _argv(netns: str | None, *args: str) -> list[str]:
    return ["ip", *(["-n", netns] if netns else []), *args]


def run_batch(netns: str | None, lines: list[str], force: bool = False) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) in netns.

    force: go on after a failing line and ignore failures (for removals of
    what may already be gone). Otherwise the first failure raises RouteError
    naming the command.
    """
    if not lines:
        return
    argv = _argv(netns, *(["-force"] if force else []), "-batch", "-")
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
        done = subprocess.run(_argv(netns, "-j", "link", "show", "dev", ifname),
                              capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteError(f"ip link show {ifname}: {e}") from None
    if done.returncode != 0:
        raise RouteError(f"device {ifname} not found")
    return int(json.loads(done.stdout)[0]["ifindex"])
