"""The pipe state the serving `natgw up` shares with `natgw status` and `up --detach`.

One JSON file per gateway, /run/natgw/pipes/<gateway>.json, mode 0600, written
with write, fsync and rename whenever it changes (active connections included,
at most once a second). It names the serving process, so a reader can tell a
live server from a file left behind by one that was killed.
"""

from __future__ import annotations

import json
from pathlib import Path

from natgw import state


def pipes_path(gateway: str) -> Path:
    return state.STATE_DIR / "pipes" / f"{gateway}.json"


def write(snapshot: dict) -> None:
    path = pipes_path(snapshot["gateway"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # natgw.state's atomic write: a private temporary file per write, so a
    # `natgw up` killed mid-write never leaves a torn file or a shared .tmp behind.
    state.write_private(path, json.dumps(snapshot, indent=2) + "\n")


def remove(gateway: str) -> None:
    pipes_path(gateway).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"natgw" in cmdline


def read(gateway: str) -> dict | None:
    """The published state of a live server of this gateway, or None."""
    try:
        data = json.loads(pipes_path(gateway).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    return data if _alive(data["pid"]) else None


def format_pipes(pipes: list[dict], served_by: int | None) -> list[str]:
    """The pipes part of a gateway's `natgw status` text (nothing while none are served)."""
    lines = [] if not pipes else ["", f"pipes: served by natgw up (pid {served_by})"]
    for p in pipes:
        lines.append("")
        lines.append(f"pipe: {p['name']}")
        own = p["listen"] or "(no port of its own: serves its peers' requests)"
        lines.append(f"  listens: {own}")
        lines.append(f"  goes to: {p['to']}" + (f" via {p['via']}" if p.get("via") else ""))
        if p.get("from") is not None:
            lines.append(f"  from: {', '.join(p['from']) or '(nobody)'}")
        lines.append(f"  active connections: {p['active']}")
        if p["connections"]:
            lines.append("  connections: " + ", ".join(
                f"{k} {v}" for k, v in p["connections"].items()))
        lines.append(f"  bytes: {p['bytes']['upstream']} upstream, "
                     f"{p['bytes']['downstream']} downstream")
        if p.get("error"):
            lines.append(f"  error: {p['error']}")
    return lines
