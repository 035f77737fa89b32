"""natgw's programs alone: nanoseconds per packet with BPF_PROG_TEST_RUN.

A private gateway (its own pins, removed at the end, attached to nothing) holds
the benchmark's mapping on ifindex 1 (test runs see loopback); the kernel runs
each program `repeat` times on one 106-byte frame and reports the mean time.
No traffic is sent anywhere. Measured with 1 and with 10,000 mappings.

    python -m bench.micro --against-lpm e62a708   # and the LPM-trie build, run by run
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.topology import POD_ADDR, POD_CIDR, extra_mappings, host_in
from natgw.dataplane import Dataplane, Mapping, layout, upgrade
from natgw.dataplane.bpfsys import Map, prog_test_run
from natgw.dataplane.loader import inline_source, pin_dir

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


CASES = {  # direction, frame, counter that must count every run (None: no match)
    "egress_translate": ("egress", udp_frame(POD_ADDR, host_in(POD_CIDR, "0.0.1.20")),
                         "egress"),
    "ingress_translate": ("ingress", udp_frame(POD_ADDR, "192.0.2.1"), "ingress"),
    "egress_no_match": ("egress", udp_frame("192.0.2.2", "192.0.2.1"), None),
}


def run_programs(gateway: str, repeat: int = 200_000, rounds: int = 5) -> dict:
    """ns per run of egress/ingress (translated and pass-through) at 1 and 10,000 mappings.

    A test run repeats the program on the same buffer, so a translated packet
    would no longer match from the second run on: the mapping here is the
    identity (10.244.0.0/16 as itself), which takes the whole translation path
    (lookup, rewrite, checksums, counters) on every run. The mapping's counters
    prove it did.
    """
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
            for name, (direction, frame, counter) in CASES.items():
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


# -- against the LPM-trie build ----------------------------------------------------------


def _counted(stats: Map, mapping_id: int) -> dict[str, int]:
    """Packets counted for a mapping per direction (map_stats: the same in both layouts)."""
    return {name: sum(v.packets for v in stats.lookup(ctypes.c_uint32(mapping_id * 2 + d)))
            for d, name in layout.DIRECTIONS.items()}


class _LpmBuild:
    """The programs of `rev`, the last LPM-trie layout, on pins of their own.

    Filled through the previous layout's structs (dataplane/upgrade.py), as its
    control plane wrote them: a remote mapping is an egress entry (key: its
    "as") and an ingress one (key: its cidr).
    """

    def __init__(self, rev: str, pdir: str, tmp: str) -> None:
        from bcc import BPF  # noqa: PLC0415 - only this measure compiles

        archive = subprocess.run(["git", "archive", rev, "bpf"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        os.makedirs(pdir, exist_ok=True)
        self.pdir = pdir
        self.bpf = BPF(text=inline_source(Path(tmp) / "bpf" / "natgw.c").encode(),
                       cflags=[f'-DNATGW_PIN_DIR="{pdir}"'])
        self.fds = {d: self.bpf.load_func(f"natgw_{d}".encode(), BPF.SCHED_CLS).fd
                    for d in ("egress", "ingress")}
        self.lpm = Map.open_pinned(os.path.join(pdir, "xlate_v4"), upgrade.LpmV4Key,
                                   layout.Xlate)
        self.stats = Map.open_pinned(os.path.join(pdir, layout.MAP_MAP_STATS), ctypes.c_uint32,
                                     layout.Counter, percpu=True)
        with Map.open_pinned(os.path.join(pdir, "devices"), ctypes.c_uint32,
                             upgrade.Device) as devices:
            devices.update(ctypes.c_uint32(LO_IFINDEX), upgrade.Device(l3_offset=14))
        self.next_id = 0

    def add(self, mappings: list[Mapping]) -> int:
        """Install remote mappings; the id of the first."""
        first = self.next_id
        for m in mappings:
            for table, key, target in ((layout.table(layout.DIR_EGRESS, layout.SIDE_DST),
                                        m.as_, m.cidr),
                                       (layout.table(layout.DIR_INGRESS, layout.SIDE_SRC),
                                        m.cidr, m.as_)):
                k = upgrade.LpmV4Key(prefixlen=upgrade.KEY_FIXED_BITS + key.prefixlen,
                                     ifindex=LO_IFINDEX, table=table)
                ctypes.memmove(k.addr, key.network_address.packed, 4)
                v = layout.Xlate(prefixlen=target.prefixlen, mapping_id=self.next_id)
                ctypes.memmove(v.addr, target.network_address.packed, 4)
                self.lpm.update(k, v)
            self.next_id += 1
        return first

    def close(self) -> None:
        self.lpm.close()
        self.stats.close()
        self.bpf.cleanup()


def compare_lpm(gateway: str, rev: str, repeat: int = 200_000, rounds: int = 15) -> dict:
    """ns per run of this build's programs and of `rev`'s (LPM tries), at 1 and 10,000
    mappings: four private gateways (build x mappings), all measured round by round
    in this one process, so that a change in the machine's load hits all four alike.

    Returns {build: {mappings: {case: {"median": ns, "min": ns}}}}.
    """
    identity = Mapping.parse("remote", POD_CIDR, POD_CIDR)
    extra = [Mapping.parse("remote", c, a) for c, a in extra_mappings(9999)]
    sizes = {"1": [identity], "10000": [identity, *extra]}
    new_name, old_name = "this build", f"{rev} (LPM trie)"
    setups: dict = {}  # (build, mappings) -> (fds, map_stats, mapping id of the identity)
    opened: list = []
    try:
        for label, mappings in sizes.items():
            dp = Dataplane.load(f"{gateway}n{label}")
            opened.append(dp)
            dp.tables.set_device(LO_IFINDEX, 14, 0, 0)
            mid = dp.tables.add_mappings(LO_IFINDEX, mappings)[0].mapping_id
            setups[(new_name, label)] = ({d: dp.programs.fd(d) for d in ("egress", "ingress")},
                                         dp.tables.map_stats, mid)
            with tempfile.TemporaryDirectory(prefix="natgw-micro-") as tmp:
                old = _LpmBuild(rev, pin_dir(f"{gateway}o{label}"), tmp)
            opened.append(old)
            setups[(old_name, label)] = (old.fds, old.stats, old.add(mappings))
        samples: dict = {key: {case: [] for case in CASES} for key in setups}
        for r in range(rounds):
            keys = list(setups)
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate who goes first
                fds, stats, mid = setups[key]
                for case, (direction, frame, counter) in CASES.items():
                    before = _counted(stats, mid)
                    res = prog_test_run(fds[direction], frame, _ctx(), repeat)
                    after = _counted(stats, mid)
                    got = {d: after[d] - before[d] for d in after}
                    want = {d: repeat if d == counter else 0 for d in after}
                    if res.retval != TC_ACT_UNSPEC or got != want:
                        raise RuntimeError(f"{key} {case}: verdict {res.retval}, "
                                           f"counted {got}, want {want}")
                    samples[key][case].append(res.duration_ns)
        out: dict = {}
        for (name, label), by_case in samples.items():
            out.setdefault(name, {})[label] = {
                case: {"median": statistics.median(v), "min": min(v)}
                for case, v in by_case.items()}
        return out
    finally:
        for o in opened:
            if isinstance(o, Dataplane):
                o.destroy()
            else:
                o.close()
                shutil.rmtree(o.pdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against-lpm", metavar="REV", required=True,
                    help="a revision of the LPM-trie layout to measure alongside")
    ap.add_argument("--rounds", type=int, default=15, help="runs per case and build")
    a = ap.parse_args(argv)
    res = compare_lpm(f"mc{os.getpid()}", a.against_lpm, rounds=a.rounds)
    print(json.dumps(res, indent=1))
    cases = list(CASES)
    print("| build | mappings | " + " | ".join(f"{c} ns (min)" for c in cases) + " |")
    print("|---|---:|" + "---:|" * len(cases))
    for name, by_label in res.items():
        for label, by_case in by_label.items():
            print(f"| {name} | {label} | " + " | ".join(
                f"{by_case[c]['median']:.0f} ({by_case[c]['min']})" for c in cases) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
