"""natgw's programs alone: nanoseconds per packet with BPF_PROG_TEST_RUN.

A private gateway (its own pins, removed at the end, attached to nothing) holds
the benchmark's mapping on ifindex 1 (test runs see loopback); the kernel runs
each program `repeat` times on one 106-byte frame and reports the mean time.
No traffic is sent anywhere. Measured with 1 and with 10,000 mappings.
"""

from __future__ import annotations

import ipaddress
import struct

from bench.topology import POD_ADDR, POD_CIDR, extra_mappings, host_in
from natgw.dataplane import Dataplane, Mapping
from natgw.dataplane.bpfsys import prog_test_run

LO_IFINDEX = 1
SKB_CTX_SIZE, SKB_IFINDEX_OFF = 192, 40  # struct __sk_buff: size, ifindex offset
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1, as the u32 retval: natgw's pass verdict


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src: str, dst: str, payload: int = 64, sport: int = 40000,
              dport: int = 9) -> bytes:
    """Ethernet + IPv4 + UDP with correct checksums."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    udp_len = 8 + payload
    body = b"\0" * payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + body
    c = _csum(s + d + struct.pack("!BBH", 0, 17, udp_len) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    return eth + ip + udp


def _ctx() -> bytes:
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("<I", ctx, SKB_IFINDEX_OFF, LO_IFINDEX)
    return bytes(ctx)


def run_programs(gateway: str, repeat: int = 200_000, rounds: int = 5) -> dict:
    """ns per run of egress/ingress (translated and pass-through) at 1 and 10,000 mappings.

    A test run repeats the program on the same buffer, so a translated packet
    would no longer match from the second run on: the mapping here is the
    identity (10.244.0.0/16 as itself), which takes the whole translation path
    (lookup, rewrite, checksums, counters) on every run. The mapping's counters
    prove it did.
    """
    cases = {  # direction, frame, counter that must count every run (None: no match)
        "egress_translate": ("egress", udp_frame(POD_ADDR, host_in(POD_CIDR, "0.0.1.20")),
                             "egress"),
        "ingress_translate": ("ingress", udp_frame(POD_ADDR, "192.0.2.1"), "ingress"),
        "egress_no_match": ("egress", udp_frame("192.0.2.2", "192.0.2.1"), None),
    }
    dp = Dataplane.load(gateway)
    out: dict = {}
    try:
        dp.tables.set_device(LO_IFINDEX, 14, 0, 0)
        mid = dp.tables.add_mapping(
            LO_IFINDEX, Mapping.parse("remote", POD_CIDR, POD_CIDR)).mapping_id
        for label, extra in (("1", 0), ("10000", 9999)):
            if extra:
                dp.tables.add_mappings(LO_IFINDEX, [Mapping.parse("remote", cidr, as_)
                                                    for cidr, as_ in extra_mappings(extra)])
            res = {}
            for name, (direction, frame, counter) in cases.items():
                samples = []
                for _ in range(rounds):
                    before = dp.tables.counters(mid)
                    r = prog_test_run(dp.programs.fd(direction), frame, _ctx(), repeat)
                    after = dp.tables.counters(mid)
                    counted = {d: after[d].packets - before[d].packets for d in after}
                    want = {d: repeat if d == counter else 0 for d in after}
                    if r.retval != TC_ACT_UNSPEC or counted != want:
                        raise RuntimeError(f"{name}: verdict {r.retval}, counted {counted}, "
                                           f"want {want}")
                    samples.append(r.duration_ns)
                res[name] = sorted(samples)[len(samples) // 2]
            out[label] = res
    finally:
        dp.destroy()
    return out
