"""Health probes: an ICMPv6 echo request to a silent replica, answered by its kernel.

WireGuard sends a persistent keepalive only when it has sent nothing for the
interval, and it counts what it *receives* too: a replica that only receives a
one-way stream from us answers with nothing but WireGuard's passive keepalive,
up to 10 s later. Judged by its receive counter alone (natgw.health), such a
live member looks dead. So the foreground `natgw up` asks: an echo request from
our tunnel address to the member's (natgw.tunnel_address), on the member's
device. The far side's kernel answers through the tunnel, and the answer grows
the receive counter the health check reads: silence then means dead, whatever
the traffic's direction. (BFD's echo function, looped by the far side's
forwarding plane, and keepalived's ping checks work the same way.)

A far side that is not natgw answers only if its device carries its own tunnel
address and its allowed-ips for us have ours (/128); without, nothing changes.

One raw ICMPv6 socket per device, opened in the gateway's netns and bound to
our address on that device (a link-local address names its link: the probe
leaves by that device only), kept open while the device keeps its ifindex.
Nothing is read from them: replies are counted by WireGuard, and the sockets
filter every ICMPv6 type out so that nothing queues on them.
"""

from __future__ import annotations

import os
import socket
import struct
from ipaddress import IPv6Address

from natgw.failure import one_line
from natgw.netns import netns_socket

ECHO_REQUEST = 128
ICMP6_FILTER = 1  # <netinet/icmp6.h>: a bit per type, set = blocked
_BLOCK_ALL = b"\xff" * 32
PAYLOAD = b"natgw health"


class Prober:
    """Echo requests from `source` (our tunnel address) on the devices of one netns."""

    def __init__(self, netns: str | None, source: IPv6Address) -> None:
        self.netns = netns
        self.source = source
        self._ident = os.getpid() & 0xFFFF
        self._seq = 0
        self._sockets: dict[str, tuple[int, socket.socket]] = {}  # device -> (ifindex, sock)

    def send(self, device: str, ifindex: int, target: IPv6Address) -> str:
        """One probe to `target` on `device`; "" when sent, else why not (tried again at
        the next one: e.g. our address not yet back on a recreated device)."""
        try:
            sock = self._socket(device, ifindex)
            self._seq = (self._seq + 1) & 0xFFFF
            # The kernel computes an ICMPv6 raw socket's checksum (RFC 3542 3.1).
            packet = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, self._ident, self._seq) + PAYLOAD
            sock.sendto(packet, (str(target), 0, 0, ifindex))
        except OSError as e:
            self._drop(device)
            return f"probe {target} on {device}: {e.strerror or e}"
        except Exception as e:  # noqa: BLE001 - NetnsNotFound, pyroute2's: health goes on
            self._drop(device)
            return f"probe {target} on {device}: {one_line(e)}"
        return ""

    def _socket(self, device: str, ifindex: int) -> socket.socket:
        have = self._sockets.get(device)
        if have is not None and have[0] == ifindex:
            return have[1]
        self._drop(device)  # a recreated device: a new ifindex
        sock = netns_socket(self.netns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _BLOCK_ALL)
            sock.bind((str(self.source), 0, 0, ifindex))
        except OSError:
            sock.close()
            raise
        self._sockets[device] = (ifindex, sock)
        return sock

    def _drop(self, device: str) -> None:
        have = self._sockets.pop(device, None)
        if have is not None:
            have[1].close()

    def keep_only(self, devices: set[str]) -> None:
        """Close the sockets of devices no longer probed (a reload removed them)."""
        for device in [d for d in self._sockets if d not in devices]:
            self._drop(device)

    def close(self) -> None:
        for device in list(self._sockets):
            self._drop(device)
