"""The gateway's tunnel address: one IPv6 link-local address per WireGuard key.

Every gateway's tunnel address is derived from its WireGuard public key
(fe80::/64 + 64 bits of a hash of the key), so each side knows the other's
from the key already in its file, and no address has to be planned. natgw puts
its own address on every tunnel device and adds each peer's address (/128) to
that peer's allowed-ips. Two things use it:

- health probes (natgw.probe): an ICMPv6 echo request to a silent replica's
  address, which the far side's kernel answers through the tunnel;
- pipes (natgw.pipes): the pipe listener binds to the own address on each
  tunnel device only.

A link-local address is reached only over its own link, and that link is the
tunnel, where WireGuard's cryptokey routing admits a source address only from
the peer it belongs to. (The derivation's domain string still says "pipe": the
addresses must not change.)
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import socket
from collections.abc import Callable
from ipaddress import IPv6Address, IPv6Network
from typing import TYPE_CHECKING

from pyroute2.netlink.exceptions import NetlinkError

from natgw.keys import decode_key
from natgw.netns import iproute

if TYPE_CHECKING:
    from natgw.state import PeerState

IFA_F_NODAD = 0x02  # no duplicate address detection: the address is usable at once
_PREFIX = IPv6Network("fe80::/64")
_DOMAIN = b"natgw pipe address v1\0"


def tunnel_address(public_key: str) -> IPv6Address:
    """The tunnel address of the gateway whose WireGuard public key (base64) this is."""
    digest = hashlib.sha256(_DOMAIN + decode_key(public_key)).digest()
    iid = int.from_bytes(digest[:8], "big") or 1
    return IPv6Address(int(_PREFIX.network_address) | iid)


def tunnel_network(public_key: str) -> IPv6Network:
    """The /128 that goes into the peer's allowed-ips."""
    return ipaddress.ip_network(f"{tunnel_address(public_key)}/128")


def ensure_address(netns: str | None, device: str, address: IPv6Address) -> None:
    """Put `address`/64 on `device` (no DAD), leaving the device's other addresses alone."""
    with iproute(netns) as ipr:
        index = ipr.link_lookup(ifname=device)
        if not index:
            raise OSError(f"device {device} not found")
        try:
            ipr.addr("replace", index=index[0], address=str(address),
                     prefixlen=_PREFIX.prefixlen, family=socket.AF_INET6, flags=IFA_F_NODAD)
        except NetlinkError as e:
            raise OSError(e.code, f"tunnel address {address} on {device}: {e}") from None


def remove_address(netns: str | None, device: str, address: str) -> None:
    """Take `address`/64 off `device`; already gone (or the device gone) is not an error."""
    with iproute(netns) as ipr:
        index = ipr.link_lookup(ifname=device)
        if not index:
            return
        try:
            ipr.addr("del", index=index[0], address=address, prefixlen=_PREFIX.prefixlen,
                     family=socket.AF_INET6)
        except NetlinkError as e:
            if e.code != errno.EADDRNOTAVAIL:
                raise OSError(e.code, f"tunnel address {address} on {device}: {e}") from None


def place_address(netns: str | None, ps: PeerState, wanted: IPv6Address | None,
                  record: Callable[[], None], check: bool) -> None:
    """Make the tunnel address on ps.device `wanted` (None: none), as ps.pipe_address
    records it. A recorded address that is not wanted (another key, or none wanted) is
    taken off first. The new one is recorded before it is added, so that a kill leaves
    it in the record; after the link is up, which would flush it otherwise. `check`:
    put it on even when the record already has it (a full apply, a recreated device);
    otherwise that is left unread, since a netns socket is most of an edit's cost."""
    text = "" if wanted is None else str(wanted)
    if ps.pipe_address and ps.pipe_address != text:
        remove_address(netns, ps.device, ps.pipe_address)
        ps.pipe_address = ""
        record()
    if wanted is None:
        return
    if ps.pipe_address != text:
        ps.pipe_address = text
        record()
    elif not check:
        return
    ensure_address(netns, ps.device, wanted)


def has_address(ipr, ifindex: int, address: str) -> bool:
    """Does the device (an open IPRoute's ifindex) carry `address`?"""
    return any(a.get_attr("IFA_ADDRESS") == address
               for a in ipr.get_addr(index=ifindex, family=socket.AF_INET6))
