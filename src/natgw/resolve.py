"""Peer endpoints named by hostname, turned into the address WireGuard is given.

The rule: `endpoint:` may name the peer by hostname (clients often know their
server only by name). natgw resolves it when it applies the file, IPv4 and IPv6
alike, taking the first address in the order the system prefers (getaddrinfo,
as `wg setconf` does). WireGuard itself keeps only the address, so while natgw
runs in the foreground it resolves again when a peer's handshake has gone stale,
as wireguard-tools' reresolve-dns does (natgw.gateway.Gateway.reresolve_stale).
"""

from __future__ import annotations

import ipaddress
import socket

from natgw.config import HostPort


class ResolveError(Exception):
    """A hostname did not resolve; one line naming the host and the reason."""


def is_hostname(endpoint: HostPort) -> bool:
    try:
        ipaddress.ip_address(endpoint.host)
    except ValueError:
        return True
    return False


def resolve(endpoint: HostPort) -> str:
    """`ip:port` or `[ipv6]:port`: an IP literal as it is, a hostname resolved now."""
    if is_hostname(endpoint):
        addr = _lookup(endpoint.host, endpoint.port)
    else:
        addr = ipaddress.ip_address(endpoint.host)
    return f"[{addr}]:{endpoint.port}" if addr.version == 6 else f"{addr}:{endpoint.port}"


def _lookup(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM,
                                   socket.IPPROTO_UDP)
    except socket.gaierror as e:
        raise ResolveError(f"cannot resolve {host}: {e.strerror}") from None
    except (UnicodeError, OSError) as e:
        raise ResolveError(f"cannot resolve {host}: {e}") from None
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            # A link-local IPv6 answer may carry a %scope, which no endpoint can hold.
            return ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
    raise ResolveError(f"cannot resolve {host}: no IPv4 or IPv6 address")
