"""How the fields of cluster.yaml's `pipes:` relate to each other and to the peers.

Each pipe's shape is checked by pydantic with the rest of the file (natgw.config.Pipe);
the relations (one of peer/remote, unique names and ports, peers that exist) by
`check_pipes`, whose messages name the fields on both sides of a conflict.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from natgw.config import ConfigError, HostPort, Pipe
from natgw.pipes.protocol import PIPE_PORT


def _same_socket(a: HostPort, b: HostPort) -> bool:
    wild = ("::", "0.0.0.0")
    return a.port == b.port and (a.host in wild or b.host in wild or a.host == b.host)


def check_pipes(pipes: list[Pipe], tunnel_peers: Iterable[str], other_peers: Iterable[str],
                metrics: HostPort, keyless: Iterable[str] = ()) -> None:
    """Raise ConfigError for the first pipe that cannot work as written.

    tunnel_peers: the names a pipe may pass connections to (WireGuard peers and
    hub clients with a publicKey); other_peers: peers without tunnel (`interface:`),
    named in the message because pipes only run inside tunnels; keyless: hub
    clients without a publicKey yet, not yet WireGuard peers of the hub.
    """
    tunnels = set(tunnel_peers)
    links = set(other_peers)
    pending = set(keyless)
    names: dict[str, int] = {}
    binds: list[tuple[str, HostPort]] = []
    for i, p in enumerate(pipes):
        at = f"pipes[{i}]"
        if p.name in names:
            raise ConfigError(f"{at}.name",
                              f"duplicate pipe name {p.name} (also pipes[{names[p.name]}])")
        names[p.name] = i
        if p.peer is not None and p.remote is not None:
            raise ConfigError(at, "set one of peer and remote, not both")
        if p.peer is None and p.remote is None:
            raise ConfigError(at, "set one of peer (pass connections on to that peer's natgw) "
                                  "or remote (dial host:port from here)")
        if p.peer is not None:
            _check_peer_name(f"{at}.peer", p.peer, tunnels, links, pending)
        for j, who in enumerate(p.from_ or []):
            _check_peer_name(f"{at}.from[{j}]", who, tunnels, links, pending)
        if p.port is not None and p.listen is not None:
            raise ConfigError(f"{at}.listen", "set port (every address) or listen (one address), "
                                              "not both")
        if p.listen is not None:
            try:
                ipaddress.ip_address(p.listen.host)
            except ValueError:
                raise ConfigError(f"{at}.listen", f"{p.listen.host} is not an IP address; "
                                                  "listen on an address of this gateway") from None
        bind = p.bind
        if bind is None:
            continue
        field = f"{at}.port" if p.port is not None else f"{at}.listen"
        if bind.port == PIPE_PORT:
            raise ConfigError(field, f"port {PIPE_PORT} is natgw's own pipe port between gateways")
        if _same_socket(bind, metrics):
            raise ConfigError(field, f"{bind} is also the metrics address {metrics}")
        for other_at, other in binds:
            if _same_socket(bind, other):
                raise ConfigError(field, f"{bind} is also where {other_at} listens ({other})")
        binds.append((at, bind))


def _check_peer_name(path: str, name: str, tunnels: set[str], links: set[str],
                     pending: set[str]) -> None:
    if name in tunnels:
        return
    if name in pending:
        # Its pipe address comes from its key: without one it cannot be told apart.
        raise ConfigError(path, f"hub client {name} has no publicKey yet; pipes need its key")
    if name in links:
        raise ConfigError(path, f"peer {name} has no WireGuard tunnel (interface:); "
                                "pipes run only inside tunnels")
    raise ConfigError(path, f"no peer named {name}")
