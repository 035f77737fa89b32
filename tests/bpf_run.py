"""Run the real dataplane programs on scapy packets with BPF_PROG_TEST_RUN.

Test runs see an Ethernet frame on loopback (ifindex 1), so the test gateway
configures ifindex 1 as an L2 device. Its pins live under a run-unique
gateway name and are removed at the end.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from natgw.dataplane import Dataplane
from natgw.dataplane.bpfsys import prog_test_run

TC_ACT_OK = 0
TC_ACT_SHOT = 2
LO_IFINDEX = 1
SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_IFINDEX_OFF = 40


def skb_ctx(ifindex: int) -> bytes:
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("<I", ctx, SKB_IFINDEX_OFF, ifindex)
    return bytes(ctx)


@dataclass
class Result:
    verdict: int
    out: bytes  # the IP packet (Ethernet header stripped)


class Runner:
    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp

    def run(self, direction: str, pkt: Packet | bytes) -> Result:
        raw = bytes(pkt)
        ethertype = 0x86DD if raw and raw[0] >> 4 == 6 else 0x0800
        frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02",
                            type=ethertype)) + raw
        res = prog_test_run(self.dp.programs.fd(direction), frame, skb_ctx(LO_IFINDEX))
        return Result(res.retval, res.data[14:])


def run_gateway_name() -> str:
    return f"t{os.getpid()}"
