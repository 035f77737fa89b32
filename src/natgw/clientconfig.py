"""wg-quick configurations for plain WireGuard clients of a hub (`natgw client-config`).

The client's address comes from natgw.pool (recorded, so it is the address the
hub configures for that client); AllowedIPs are the pool and our networks as
the hub shows them (`hub.local` translated, untranslated `cidrs` as they are).
The output is a plain wg-quick file: `wg-quick strip` accepts it.
"""

from __future__ import annotations

from natgw import pool
from natgw.config import GatewayConfig, IPNetwork

KEEPALIVE = 25  # seconds: keeps the client's NAT mapping open so the hub can reach it
PRIVATE_KEY_PLACEHOLDER = "<PLACEHOLDER: this client's private key>"


class ClientConfigError(Exception):
    """The file has no hub or no such client; one line."""


def shown_networks(cfg: GatewayConfig) -> list[IPNetwork]:
    """Our networks as every client sees them: hub.local's `as`, other cidrs unchanged."""
    assert cfg.hub is not None
    local = cfg.hub.local
    out: list[IPNetwork] = [loc.as_ for loc in local]
    for c in cfg.cidrs:
        if not any(c.version == loc.cidr.version and c.subnet_of(loc.cidr) for loc in local):
            out.append(c)
    return out


def allowed_ips(cfg: GatewayConfig) -> list[IPNetwork]:
    assert cfg.hub is not None
    return [cfg.hub.pool, *shown_networks(cfg)]


def render(cfg: GatewayConfig, client: str, private_key: str | None = None) -> str:
    """The wg-quick file for `client`; records its pool address if it had none yet.

    private_key None: a clearly marked placeholder takes its place.
    """
    hub = cfg.hub
    if hub is None:
        raise ClientConfigError("hub: the file has no hub: section")
    try:
        entry = hub.client(client)
    except KeyError:
        known = ", ".join(c.name for c in hub.clients) or "none"
        raise ClientConfigError(f"hub.clients: no client named {client} (clients: {known})"
                                ) from None
    address = pool.assign_for(cfg)[client]
    lines = [
        f"# wg-quick configuration of client {client} of the natgw hub {cfg.name}.",
        f"# Save as /etc/wireguard/{cfg.name}.conf (chmod 600); then: wg-quick up {cfg.name}",
        "[Interface]",
    ]
    if private_key is None and entry.public_key is None:
        lines.append(f"# {client} has no publicKey in the hub's file yet: run natgw "
                     "client-config with --genkey, or put a private key here and its public "
                     "key into the file.")
    elif private_key is None:
        lines.append(f"# Put {client}'s own private key here: the one whose public key is "
                     f"{client}'s publicKey in the hub's file.")
    lines += [
        f"PrivateKey = {private_key or PRIVATE_KEY_PLACEHOLDER}",
        f"Address = {address}/{address.max_prefixlen}",
        f"MTU = {cfg.mtu}",
        "",
        "[Peer]",
        f"# the hub {cfg.name}",
        f"PublicKey = {cfg.public_key}",
    ]
    if hub.endpoint is not None:
        lines.append(f"Endpoint = {hub.endpoint}")
    else:
        lines += ["# No hub.endpoint: in the hub's file. Set it there, or write the hub's",
                  f"# public address here: Endpoint = <host>:{hub.listen_port}"]
    lines += [
        f"AllowedIPs = {', '.join(str(n) for n in allowed_ips(cfg))}",
        f"PersistentKeepalive = {KEEPALIVE}",
    ]
    return "\n".join(lines) + "\n"
