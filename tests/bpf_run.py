"""Run the real dataplane programs on scapy packets with BPF_PROG_TEST_RUN.

Test runs see an Ethernet frame on loopback (ifindex 1), so the test gateway
configures ifindex 1 as an L2 device. Its pins live under a run-unique
gateway name and are removed at the end.

Every run is CHECKSUM_COMPLETE by default (BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
Linux 6.11+): the kernel sets skb->csum to the input's sum and fails the run
with EBADMSG if the program leaves skb->csum different from the output's sum,
the state a receiving NIC with checksum offload hands to tc ingress.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
from dataclasses import dataclass

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from natgw.dataplane import Dataplane
from natgw.dataplane.bpfsys import BpfError, prog_test_run

# Verdicts as the program returns them (pkt_cls.h); natgw passes with UNSPEC.
TC_ACT_UNSPEC = -1
TC_ACT_OK = 0
TC_ACT_SHOT = 2
LO_IFINDEX = 1
SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_IFINDEX_OFF = 40
SKB_GSO_SIZE_OFF = 176
SKB_CB_OFF = 48  # __u32 cb[5]
TC_ACT_REDIRECT = 7
ETH_HLEN = 14
BPF_F_TEST_SKB_CHECKSUM_COMPLETE = 1 << 2
ETHER = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02"))[:12]


class StaleSkbCsum(AssertionError):
    """The program left skb->csum out of step with the packet (CHECKSUM_COMPLETE)."""


def skb_ctx(ifindex: int, gso_size: int = 0, cb: tuple[int, ...] = ()) -> bytes:
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("<I", ctx, SKB_IFINDEX_OFF, ifindex)
    struct.pack_into("<I", ctx, SKB_GSO_SIZE_OFF, gso_size)
    struct.pack_into(f"<{len(cb)}I", ctx, SKB_CB_OFF, *cb)
    return bytes(ctx)


def skb_cb(ctx: bytes) -> tuple[int, ...]:
    """The five cb[] words of a __sk_buff as a run left them."""
    return struct.unpack_from("<5I", ctx, SKB_CB_OFF)


def ethertype(raw: bytes) -> int:
    return 0x86DD if raw and raw[0] >> 4 == 6 else 0x0800


@dataclass
class Result:
    verdict: int
    out: bytes  # the IP packet (Ethernet header stripped)


def run_frame(prog_fd: int, frame: bytes, csum_complete: bool = True,
              ifindex: int = LO_IFINDEX, gso_size: int = 0) -> tuple[int, bytes]:
    """(signed verdict, output frame) of one run; StaleSkbCsum on EBADMSG."""
    verdict, out, _ = run_frame_cb(prog_fd, frame, csum_complete, ifindex, gso_size)
    return verdict, out


def run_frame_cb(prog_fd: int, frame: bytes, csum_complete: bool = True,
                 ifindex: int = LO_IFINDEX, gso_size: int = 0,
                 cb: tuple[int, ...] = ()) -> tuple[int, bytes, tuple[int, ...]]:
    """As run_frame, with the skb's cb[] words given in and returned."""
    flags = BPF_F_TEST_SKB_CHECKSUM_COMPLETE if csum_complete else 0
    try:
        res = prog_test_run(prog_fd, frame, skb_ctx(ifindex, gso_size, cb), flags=flags)
    except BpfError as e:
        if e.errno == errno.EBADMSG:
            raise StaleSkbCsum(f"skb->csum stale after the run on {frame.hex()}") from e
        raise
    return ctypes.c_int32(res.retval).value, res.data, skb_cb(res.ctx)


XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)


def xdp_ctx(ifindex: int, size: int) -> bytes:
    """struct xdp_md for a test run: data 0, data_end the frame's size, the input device."""
    return struct.pack("<6I", 0, size, 0, ifindex, 0, 0)


def run_xdp(prog_fd: int, frame: bytes, ifindex: int) -> tuple[int, bytes]:
    """(XDP verdict, output frame) of one XDP test run on device ifindex (a device of the
    calling thread's netns: its fib lookups are done there)."""
    res = prog_test_run(prog_fd, frame, xdp_ctx(ifindex, len(frame)))
    return res.retval, res.data


class Runner:
    def __init__(self, dp: Dataplane, csum_complete: bool = True) -> None:
        self.dp = dp
        self.csum_complete = csum_complete

    def run(self, direction: str, pkt: Packet | bytes) -> Result:
        raw = bytes(pkt)
        frame = ETHER + ethertype(raw).to_bytes(2, "big") + raw
        verdict, out = run_frame(self.dp.programs.fd(direction), frame, self.csum_complete)
        return Result(verdict, out[ETH_HLEN:])


def set_skip_bit(tables, ifindex: int, table: int, addr: str) -> None:
    """Mark the /16 bucket of `addr` as holding no long prefix in a device's table: what
    a kill between an entry's write and the skip bitmaps' rewrite leaves."""
    from natgw.dataplane import layout

    bucket = layout.skip_bucket(ipaddress.ip_address(addr).packed)
    key = ctypes.c_uint32(layout.skip_index(tables.device(ifindex).slot, table, bucket // 64))
    word = int(tables.v4_skip.lookup(key).value)
    tables.v4_skip.update(key, ctypes.c_uint64(word | 1 << (bucket % 64)))


def run_gateway_name() -> str:
    return f"t{os.getpid()}"
