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
from collections.abc import Iterator
from pathlib import Path

from bench.topology import FAMILY, POD_ADDR, POD_CIDR, extra_mappings, host_in
from lab.net import add_address, sh, veth
from lab.record import Record
from natgw.dataplane import Dataplane, Mapping, layout, upgrade
from natgw.dataplane.bpfsys import Map, prog_test_run
from natgw.dataplane.loader import inline_source, pin_dir
from natgw.dataplane.tables import Tables
from natgw.netns import in_netns

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


TABLE_SIZES = ("1", "10000")  # mappings on the device: its own, and 9,999 extra


def table_sizes(tables: Tables, ifindex: int, rounds: int) -> Iterator[str]:
    """The labels of TABLE_SIZES, each while the device holds that many mappings,
    `rounds` times. The sizes take turns and who goes first alternates (one change
    a round), so a drift of the machine cancels instead of passing for the cost of
    the mappings. The device is left with its own mapping."""
    extras = [Mapping.parse("remote", c, a) for c, a in extra_mappings(9999)]
    installed = False
    try:
        for r in range(rounds):
            for label in TABLE_SIZES if r % 2 == 0 else TABLE_SIZES[::-1]:
                if (label != TABLE_SIZES[0]) != installed:
                    installed = not installed
                    (tables.add_mappings if installed else tables.remove_mappings)(ifindex,
                                                                                   extras)
                yield label
    finally:
        if installed:
            tables.remove_mappings(ifindex, extras)


def run_programs(gateway: str, repeat: int = 200_000, rounds: int = 6) -> dict:
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
        samples: dict[str, dict[str, list[int]]] = {
            label: {name: [] for name in CASES} for label in TABLE_SIZES}
        for label in table_sizes(dp.tables, LO_IFINDEX, rounds):
            for name, (direction, frame, counter) in CASES.items():
                before = dp.tables.counters(mid)
                r = prog_test_run(dp.programs.fd(direction), frame, _ctx(), repeat)
                after = dp.tables.counters(mid)
                counted = {d: after[d].packets - before[d].packets for d in after}
                want = {d: repeat if d == counter else 0 for d in after}
                if r.retval != TC_ACT_UNSPEC or counted != want:
                    raise RuntimeError(f"{name}: verdict {r.retval}, counted {counted}, "
                                       f"want {want}")
                samples[label][name].append(r.duration_ns)
        out = {label: {name: sorted(v)[len(v) // 2] for name, v in by_case.items()}
               for label, by_case in samples.items()}
    finally:
        dp.destroy()
    return out


# -- the fast path's lanes ---------------------------------------------------------
# A test run takes its device from the ctx's ifindex and does its fib lookup in the
# netns of the thread that runs it: a netns with a LAN device (a pod's veth) and an
# interface peer's device gives the lanes their whole path, fib lookup included.
# A run repeated on one buffer lowers the TTL each time: frames start at 255 and
# a call repeats LANE_REPEAT times, every one of them forwarded.

LANE_REPEAT = 250
LANE_MAC = {"lan": ("02:00:00:00:01:01", "02:00:00:00:01:02"),
            "ifc": ("02:00:00:00:0f:01", "02:00:00:00:0f:02")}
LANE_REMOTE = {4: ("10.212.0.0/16", "10.212.1.10", "192.168.77.2", "192.168.77.1/24"),
               6: ("fd00:212::/48", "fd00:212:0:1::10", "fd00:77::2", "fd00:77::1/64")}
TC_ACT_REDIRECT = 7


def ip_frame(src: str, dst: str, dst_mac: str, payload: int = 64, ttl: int = 255) -> bytes:
    """Ethernet + IPv4 or IPv6 + UDP with correct checksums, to dst_mac."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    udp_len = 8 + payload
    udp = struct.pack("!HHHH", 40000, 9, udp_len, 0) + b"\0" * payload
    c = _csum(s + d + struct.pack("!IxxxB", udp_len, 17) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    if len(s) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, ttl, 17, 0, s, d)
        ip, ethertype = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:], "0800"
    else:
        ip, ethertype = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, ttl, s, d), "86dd"
    eth = bytes.fromhex(dst_mac.replace(":", "") + LANE_MAC["ifc"][1].replace(":", "")
                        + ethertype)
    return eth + ip + udp


def lane_cases(idx: dict[str, int]) -> dict[str, tuple[str, int, bytes, str]]:
    """name -> (program, input ifindex, frame, the fast-path decision every run takes)."""
    cases = {}
    for v in (4, 6):
        fam, (_, remote_host, _, _) = FAMILY[v], LANE_REMOTE[v]
        cases[f"lan_v{v}"] = ("lan", idx["lan"],
                              ip_frame(fam.pod_addr, remote_host, LANE_MAC["lan"][0]),
                              "redirect_eth")
        cases[f"ingress_fast_v{v}"] = ("ingress_fast", idx["ifc"],
                                       ip_frame(remote_host, fam.pod_addr, LANE_MAC["ifc"][0]),
                                       "redirect_peer")
    return cases


def run_lanes(rec: Record, calls: int = 400, rounds: int = 6, cpu: int = 1) -> dict:
    """ns per packet of the fast path's lanes (route, translate, rewrite, count,
    redirect), per program and family, at 1 and 10,000 mappings.

    The gateway's one remote mapping per family is the identity (a packet
    translated on one run still matches on the next), on an `interface:` device
    whose neighbour answers for both families; the pod's veth has its peer in
    another netns. Each sample is the mean over `calls` x LANE_REPEAT runs on
    `cpu`; the median of `rounds` samples is reported. The fast path's counters
    prove every run took the lane to its redirect. The netns and the pins are in
    the run's record (`python -m bench --cleanup` removes what a kill left).
    """
    prefix = f"{rec.prefix}l"
    g, far = rec.netns(f"{prefix}g"), rec.netns(f"{prefix}f")
    gateway = f"{prefix}x"
    rec.gateways[gateway] = g  # `natgw down` removes its pins
    rec.save()
    dp = None
    try:
        devs = {role: f"{prefix}{role}" for role in LANE_MAC}
        for i, (role, (mac_g, mac_f)) in enumerate(LANE_MAC.items()):
            veth(g, devs[role], far, f"{prefix}p{i}", mac_g, mac_f)
        sh(g, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        mappings = []
        for v in (4, 6):
            fam, (remote, _, via, ifc_addr) = FAMILY[v], LANE_REMOTE[v]
            add_address(g, devs["lan"], f"{fam.pod_gw}/{fam.pod_len}")
            add_address(g, devs["ifc"], ifc_addr)
            sh(g, "ip", "neigh", "replace", fam.pod_addr, "lladdr", LANE_MAC["lan"][1],
               "dev", devs["lan"], "nud", "permanent")
            sh(g, "ip", "neigh", "replace", via, "lladdr", LANE_MAC["ifc"][1],
               "dev", devs["ifc"], "nud", "permanent")
            sh(g, "ip", "route", "add", remote, "via", via, "dev", devs["ifc"])
            mappings.append(Mapping.parse("remote", remote, remote))
        idx = {role: int(sh(g, "cat", f"/sys/class/net/{dev}/ifindex"))
               for role, dev in devs.items()}
        dp = Dataplane.load(gateway)
        t = dp.tables
        t.set_device(idx["lan"], 14, 0, 0, layout.DEV_F_LAN | layout.DEV_F_PEER_NETNS)
        t.set_device(idx["ifc"], 14, 1460, 1440)
        t.set_mappings(idx["ifc"], mappings)
        cases = lane_cases(idx)
        samples = {label: {name: [] for name in cases} for label in TABLE_SIZES}
        for label in table_sizes(t, idx["ifc"], rounds):
            for name, (prog, ifindex, frame, decision) in cases.items():
                samples[label][name].append(
                    in_netns(g, lambda p=prog, i=ifindex, f=frame, d=decision:
                             _lane_sample(dp, p, i, f, d, calls, cpu)))
        return {label: {name: statistics.median(v) for name, v in by_case.items()}
                for label, by_case in samples.items()}
    finally:
        if dp is not None:
            dp.destroy()
        rec.gateways.pop(gateway)
        for ns in (g, far):
            rec.delete_netns(ns)


def _lane_sample(dp: Dataplane, prog: str, ifindex: int, frame: bytes, decision: str,
                 calls: int, cpu: int) -> float:
    """Mean ns per run over calls x LANE_REPEAT runs, checked by the fast-path counters."""
    os.sched_setaffinity(0, {cpu})
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("<I", ctx, SKB_IFINDEX_OFF, ifindex)
    fd = dp.programs.fd(prog)
    before = dp.tables.fast_stats_of(ifindex).get(decision, 0)
    total = 0
    for _ in range(calls):
        r = prog_test_run(fd, frame, bytes(ctx), LANE_REPEAT)
        if r.retval != TC_ACT_REDIRECT:
            raise RuntimeError(f"{prog} on {ifindex}: verdict {r.retval}, not a redirect")
        total += r.duration_ns
    got = dp.tables.fast_stats_of(ifindex).get(decision, 0) - before
    if got != calls * LANE_REPEAT:
        raise RuntimeError(f"{prog} on {ifindex}: {got} {decision}, want {calls * LANE_REPEAT}")
    return total / calls


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
