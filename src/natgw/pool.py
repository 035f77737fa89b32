"""Hub pool addresses: which client has which address, stable and recorded.

A client without `address:` gets one from the hub's pool. The choice is recorded
in /var/lib/natgw/<gateway>.pool.json (persistent: plain clients keep a static
`Address` in their wg-quick file, so it must survive reboots, `down` and `up`),
keyed by client name. A recorded address is kept while it stays valid; only new
clients (or ones whose record now collides with an explicit `address:`) take the
lowest free address. List order therefore never moves an existing client.
Removed clients' records are dropped, freeing their addresses.

`assign` is the pure rule; `assign_for` loads, assigns and records (write, fsync,
rename) before anything is configured with the result.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

from natgw.config import GatewayConfig, Hub, IPAddress, IPNetwork

LIB_DIR = Path(os.environ.get("NATGW_LIB_DIR", "/var/lib/natgw"))


class PoolError(Exception):
    """The pool record cannot be read or written, or the pool is full; one line."""


def pool_path(gateway: str) -> Path:
    return LIB_DIR / f"{gateway}.pool.json"


def _bounds(pool: IPNetwork) -> tuple[int, int]:
    """First and last usable address of the pool, as integers."""
    first, last = int(pool.network_address), int(pool.broadcast_address)
    if pool.num_addresses > 2:
        first += 1  # the network address (v6: the subnet-router anycast)
        if pool.version == 4:
            last -= 1  # the broadcast address
    return first, last


def _hosts(pool: IPNetwork) -> Iterator[IPAddress]:
    """The pool's client addresses in order, lazily (a v6 pool is huge)."""
    first, last = _bounds(pool)
    make = ipaddress.IPv4Address if pool.version == 4 else ipaddress.IPv6Address
    for n in range(first, last + 1):
        yield make(n)


def _usable(addr: IPAddress | None, pool: IPNetwork) -> bool:
    if addr is None or addr.version != pool.version:
        return False
    first, last = _bounds(pool)
    return first <= int(addr) <= last


def assign(hub: Hub, recorded: dict[str, str]) -> dict[str, IPAddress]:
    """Each client's address: explicit, else recorded (if still valid), else lowest free."""
    pool, own = hub.pool, hub.address.ip
    out: dict[str, IPAddress] = {c.name: c.address for c in hub.clients if c.address is not None}
    taken = {own, *out.values()}
    pending = []
    for c in hub.clients:
        if c.address is not None:
            continue
        rec = _parse(recorded.get(c.name))
        if rec is not None and _usable(rec, pool) and rec not in taken:
            out[c.name] = rec
            taken.add(rec)
        else:
            pending.append(c.name)
    if pending:
        free = (a for a in _hosts(pool) if a not in taken)
        for name in pending:
            addr = next(free, None)
            if addr is None:
                raise PoolError(f"hub.address: the pool {pool} is full")
            out[name] = addr
            taken.add(addr)
    return {c.name: out[c.name] for c in hub.clients}


@functools.lru_cache(maxsize=1 << 16)  # the same records are read on every apply
def _parse(text: str | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def load(gateway: str) -> dict[str, str]:
    """Recorded assignments (client name -> address); empty when none."""
    path = pool_path(gateway)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PoolError(f"{path}: cannot read the pool record: {e}") from None
    clients = raw.get("clients") if isinstance(raw, dict) else None
    if not isinstance(clients, dict):
        raise PoolError(f"{path}: not a pool record")
    return {str(k): str(v) for k, v in clients.items()}


def save(gateway: str, pool: IPNetwork, assigned: dict[str, IPAddress]) -> None:
    path = pool_path(gateway)
    try:
        LIB_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        data = {"pool": str(pool), "clients": {k: str(v) for k, v in sorted(assigned.items())}}
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise PoolError(f"{path}: cannot record the pool: {e.strerror}") from None


def assign_for(cfg: GatewayConfig) -> dict[str, IPAddress]:
    """The hub's client addresses, recorded before they are used."""
    if cfg.hub is None:
        return {}
    recorded = load(cfg.name)
    assigned = assign(cfg.hub, recorded)
    # Record only what the pool chose: explicit addresses live in the file.
    chosen = {c.name: assigned[c.name] for c in cfg.hub.clients if c.address is None}
    if {k: str(v) for k, v in chosen.items()} != recorded:
        save(cfg.name, cfg.hub.pool, chosen)
    return assigned


def forget(gateway: str) -> None:
    pool_path(gateway).unlink(missing_ok=True)
