"""Fuzz natgw's programs through BPF_PROG_TEST_RUN and check every run against the oracle.

    python tests/fuzz_dataplane.py --cases 100000 [--seed N]
    python tests/fuzz_dataplane.py --replay MODE DIRECTION ETHERTYPE HEX

Both programs run with the fuzz mappings installed (tests/fuzz_oracle.py), on
a device configured three ways:

- l2:     an Ethernet device; the skb is CHECKSUM_COMPLETE, so the kernel also
          fails a run that leaves skb->csum out of step with the packet;
- l2-mss: the same with TCP MSS clamping on;
- l3:     a device without link header (WireGuard, tun): the packet is handed
          over as the frame itself, see the address plan in fuzz_oracle. Test
          runs need 14 bytes, so L3 inputs are at least that long, and skb->csum
          covers only what follows byte 14, so these runs are not CHECKSUM_COMPLETE.

The kernel refuses (EINVAL) test runs of a frame that claims IPv4 or IPv6 but
is shorter than that header after its 14 link bytes: such cuts are counted
as refused, not run.

Cases: every seed cut at every length in every mode (the sweep), then
random mutations of seeds and random bytes. A failure prints a line that
--replay runs again.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from bpf_run import ETH_HLEN, ETHER, LO_IFINDEX, StaleSkbCsum, run_frame
from fuzz_oracle import MAPPINGS, check
from fuzz_packets import ETHERTYPES, ethertype_of, mutate, random_bytes, seeds

from natgw.dataplane import Dataplane, layout
from natgw.dataplane.bpfsys import BpfError


@dataclass(frozen=True)
class Mode:
    name: str
    l3_offset: int
    mss: tuple[int, int]
    csum_complete: bool

    @property
    def l3(self) -> bool:
        return self.l3_offset == 0

    @property
    def min_len(self) -> int:
        return ETH_HLEN if self.l3 else 0


MODES = {m.name: m for m in (Mode("l2", ETH_HLEN, (0, 0), True),
                             Mode("l2-mss", ETH_HLEN, (1380, 1360), True),
                             Mode("l3", 0, (0, 0), False))}


@dataclass(frozen=True)
class Case:
    mode: str
    direction: str
    ethertype: int  # what the skb claims (L2); L3 runs read it from the packet's bytes 12-13
    data: bytes
    origin: str

    def replay_args(self) -> str:
        return f"--replay {self.mode} {self.direction} {self.ethertype:04x} {self.data.hex()}"


def sweep(modes: list[str], names: set[str] | None = None) -> Iterator[Case]:
    """Every seed (or those named) cut at every length, in every mode."""
    for mode in modes:
        for s in seeds():
            if names is not None and s.name not in names:
                continue
            for n in range(MODES[mode].min_len, len(s.data) + 1):
                yield Case(mode, s.direction, ethertype_of(s.data), s.data[:n],
                           f"{s.name} cut at {n}")


def random_cases(seed: int, count: int, modes: list[str]) -> Iterator[Case]:
    """@count mutated or random inputs, in blocks of one mode (fewer device updates)."""
    rng = random.Random(seed)
    block = 1000
    for i in range(count):
        mode = modes[(i // block) % len(modes)]
        direction = rng.choice(("egress", "ingress"))
        if rng.random() < 0.15:
            data, et = random_bytes(rng)
            origin = f"random bytes (seed {seed}, case {i})"
        else:
            s = rng.choice(seeds())
            direction = s.direction if rng.random() < 0.9 else direction
            data = mutate(rng, s.data)
            if rng.random() < 0.5:
                data = data[:rng.randint(0, len(data))]
            et = ethertype_of(s.data) if rng.random() < 0.95 else rng.choice(
                ETHERTYPES + (rng.randrange(65536),))
            origin = f"{s.name} mutated (seed {seed}, case {i})"
        if len(data) < MODES[mode].min_len:
            data += rng.randbytes(MODES[mode].min_len - len(data))
        yield Case(mode, direction, et, data, origin)


class Fuzzer:
    """A private gateway (pins removed by close()) with the fuzz mappings on ifindex 1."""

    def __init__(self) -> None:
        self.dp = Dataplane.load(f"fz{os.getpid()}")
        self.mode: str | None = None
        self.dp.tables.set_device(LO_IFINDEX, ETH_HLEN, 0, 0)
        self.dp.tables.set_mappings(LO_IFINDEX, MAPPINGS)
        self.slot = self.dp.tables.device(LO_IFINDEX).slot
        self.verdicts: Counter[str] = Counter()

    def close(self) -> None:
        self.dp.destroy()

    def set_mode(self, name: str) -> None:
        if name != self.mode:
            m = MODES[name]
            self.dp.tables.set_device(LO_IFINDEX, m.l3_offset, *m.mss)
            self.mode = name

    def drops(self) -> int:
        total = 0
        for reason in layout.DROPS:
            key = ctypes.c_uint32(self.slot * layout.DEV_STAT_MAX + reason)
            total += sum(int(v.value) for v in self.dp.tables.dev_stats.lookup(key) or [])
        return total

    def run(self, case: Case) -> str | None:
        """The property @case breaks, or None."""
        self.set_mode(case.mode)
        mode = MODES[case.mode]
        if mode.l3:
            frame = case.data
            et = int.from_bytes(frame[12:14], "big")
            protocol = et if et >= 0x600 else 0
        else:
            frame = ETHER + case.ethertype.to_bytes(2, "big") + case.data
            protocol = case.ethertype
        before = self.drops()
        try:
            verdict, out = run_frame(self.dp.programs.fd(case.direction), frame,
                                     mode.csum_complete)
        except StaleSkbCsum:
            return "skb->csum stale after the run (CHECKSUM_COMPLETE)"
        except BpfError as e:
            # The kernel refuses test runs of frames claiming IPv4 (IPv6) that
            # hold less than an IPv4 (IPv6) header after the Ethernet header.
            if e.errno != errno.EINVAL or len(frame) >= ETH_HLEN + 40:
                raise
            self.verdicts["refused by the kernel (short IP frame)"] += 1
            return None
        dropped = self.drops() - before
        if not mode.l3:
            if out[:ETH_HLEN] != frame[:ETH_HLEN]:
                return "Ethernet header changed"
            out = out[ETH_HLEN:]
        self.verdicts["dropped" if verdict == 2 else
                      "passed changed" if out != case.data else "passed unchanged"] += 1
        return check(case.data, protocol, case.direction, verdict, out, dropped,
                     mode.mss != (0, 0))


@dataclass
class Report:
    cases: int
    seconds: float
    failures: list[tuple[Case, str]]
    verdicts: Counter

    def lines(self) -> list[str]:
        rate = self.cases / self.seconds if self.seconds else 0.0
        out = [f"fuzz: {self.cases} cases in {self.seconds:.1f} s ({rate:.0f} cases/s), "
               f"{len(self.failures)} failures",
               "fuzz: " + ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items()))]
        for case, why in self.failures[:20]:
            out.append(f"FAIL {why}: {case.origin}, {case.mode} {case.direction}\n"
                       f"  replay: python tests/fuzz_dataplane.py {case.replay_args()}")
        return out


def fuzz(cases: Iterator[Case], fuzzer: Fuzzer, max_failures: int = 100) -> Report:
    start = time.monotonic()
    failures = []
    n = 0
    for case in cases:
        n += 1
        why = fuzzer.run(case)
        if why:
            failures.append((case, why))
            if len(failures) >= max_failures:
                break
    return Report(n, time.monotonic() - start, failures, fuzzer.verdicts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="random cases after the sweep")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-sweep", action="store_true", help="skip the every-length sweep")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: l2,l2-mss,l3")
    ap.add_argument("--replay", nargs=4, metavar=("MODE", "DIRECTION", "ETHERTYPE", "HEX"))
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES) or (args.replay and args.replay[0] not in MODES):
        ap.error(f"mode: choose from {', '.join(MODES)}")
    fuzzer = Fuzzer()
    try:
        if args.replay:
            mode, direction, et, data = args.replay
            case = Case(mode, direction, int(et, 16), bytes.fromhex(data), "replay")
            why = fuzzer.run(case)
            print(f"replay: {why or 'ok'}")
            return 1 if why else 0
        seed = args.seed if args.seed is not None else random.randrange(2**32)
        print(f"fuzz: seed {seed}; {len(seeds())} seeds; modes {', '.join(modes)}")
        sweep_report = None
        if not args.no_sweep:
            sweep_report = fuzz(sweep(modes), fuzzer)
            print("sweep " + "\nsweep ".join(sweep_report.lines()), flush=True)
        fuzzer.verdicts.clear()
        report = fuzz(random_cases(seed, args.cases, modes), fuzzer)
        print("random " + "\nrandom ".join(report.lines()))
        failed = bool(report.failures) or bool(sweep_report and sweep_report.failures)
        return 1 if failed else 0
    finally:
        fuzzer.close()


if __name__ == "__main__":
    sys.exit(main())
