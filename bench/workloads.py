"""The UDP workloads of the forwarding measures: packet size x address family x flows.

Pure (no I/O): the runner, the generator's arguments, the report and the targets
all name a workload's figures through `Workload.measure`, so they cannot disagree.

- size "64": 64 bytes of UDP payload (92-byte IPv4 / 112-byte IPv6 packets), the
  per-packet cost the issue's headline targets are about;
- size "1400": 1400-byte IP packets (1372 / 1352 bytes of payload), which still fit
  the WireGuard MTU of 1420, so both transports carry them unfragmented;
- one flow (one 5-tuple), or a new flow per packet (random source port and low 16
  bits of the source address: conntrack sees a new connection every packet).
"""

from __future__ import annotations

from dataclasses import dataclass

SIZES = ("64", "1400")
FAMILIES = (4, 6)
IP_HEADER = {4: 20, 6: 40}
UDP_HEADER = 8
SMALL_PAYLOAD = 64     # bytes of UDP payload in the "64" size
LARGE_PACKET = 1400    # bytes of IP packet in the "1400" size


@dataclass(frozen=True)
class Workload:
    size: str       # "64" or "1400", see the module doc
    family: int     # 4 or 6
    new_flow: bool  # a new flow per packet

    def __post_init__(self) -> None:
        if self.size not in SIZES or self.family not in FAMILIES:
            raise ValueError(f"workload {self.size}/{self.family}: sizes {SIZES}, "
                             f"families {FAMILIES}")

    @property
    def measure(self) -> str:
        """The measure's name: "udp1"/"udpn" (IPv4, 64 B: the names of earlier runs),
        with "-v6" and "-1400" appended for the other classes."""
        return ("udpn" if self.new_flow else "udp1") + self.suffix

    @property
    def suffix(self) -> str:
        return ("" if self.family == 4 else "-v6") + ("" if self.size == "64" else "-1400")

    @property
    def payload(self) -> int:
        if self.size == "64":
            return SMALL_PAYLOAD
        return LARGE_PACKET - IP_HEADER[self.family] - UDP_HEADER

    @property
    def ip_bytes(self) -> int:
        return self.payload + UDP_HEADER + IP_HEADER[self.family]

    @property
    def klass(self) -> str:
        """"64 B IPv4" etc.: the traffic class, both flows alike."""
        return f"{self.size} B IPv{self.family}"

    @property
    def label(self) -> str:
        return f"{self.klass}, {'new flow per packet' if self.new_flow else 'one flow'}"


def classes(sizes: tuple[str, ...] = SIZES,
            families: tuple[int, ...] = FAMILIES) -> list[tuple[str, int]]:
    """(size, family) pairs, the headline class (64 B IPv4) first."""
    return [(s, f) for s in SIZES if s in sizes for f in FAMILIES if f in families]


def workloads(sizes: tuple[str, ...] = SIZES,
              families: tuple[int, ...] = FAMILIES) -> list[Workload]:
    """Every workload of the classes: one flow, then a new flow per packet."""
    return [Workload(s, f, n) for s, f in classes(sizes, families) for n in (False, True)]


HEADLINE = (Workload("64", 4, False), Workload("64", 4, True))
