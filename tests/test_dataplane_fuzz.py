"""A bounded sample of the dataplane fuzz (tests/fuzz_dataplane.py; `make fuzz` runs more).

Every seed cut at every length in every device mode, then a fixed-seed batch
of random mutations, each run checked against the oracle in fuzz_oracle.py.
"""

from __future__ import annotations

import pytest
from fuzz_dataplane import MODES, Case, Fuzzer, fuzz, random_cases, sweep
from fuzz_oracle import LA, RA, TC_ACT_SHOT, TC_ACT_UNSPEC, L, check
from fuzz_packets import seeds
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

pytestmark = pytest.mark.bpf

SEED = 20261202
RANDOM_CASES = 12_000


@pytest.fixture(scope="module")
def fuzzer():
    f = Fuzzer()
    try:
        yield f
    finally:
        f.close()


def failures_text(report) -> str:
    return "\n".join(report.lines())


def test_every_seed_cut_at_every_length(fuzzer):
    report = fuzz(sweep(list(MODES)), fuzzer)
    assert not report.failures, failures_text(report)
    # The sweep reaches every outcome: a fuzz that only ever passes proves little.
    assert {"dropped", "passed changed", "passed unchanged"} <= set(report.verdicts)


def test_random_mutations(fuzzer):
    report = fuzz(random_cases(SEED, RANDOM_CASES, list(MODES)), fuzzer)
    assert report.cases == RANDOM_CASES
    assert not report.failures, failures_text(report)


def test_whole_seeds_are_translated_or_dropped_as_designed(fuzzer):
    """Uncut seeds: matched ones change, unmatched ones do not, routed ones drop."""
    fuzzer.verdicts.clear()
    for s in seeds():
        case = Case("l2", s.direction, 0x86DD if s.data[0] >> 4 == 6 else 0x0800, s.data,
                    s.name)
        assert fuzzer.run(case) is None, s.name
    outcomes = dict(fuzzer.verdicts)
    assert outcomes.get("dropped", 0) >= 2  # the routing-header seeds with segments left
    assert outcomes.get("passed changed", 0) > outcomes.get("passed unchanged", 0) > 0


def test_oracle_rejects_what_natgw_must_never_do():
    pkt = bytes(IP(src=L, dst=RA) / UDP(sport=1, dport=2) / Raw(b"data"))
    good = bytes(IP(src=LA, dst="8.0.3.4") / UDP(sport=1, dport=2) / Raw(b"data"))
    assert check(pkt, 0x0800, "egress", TC_ACT_UNSPEC, good, 0, False) is None
    bad_csum = good[:26] + bytes([good[26] ^ 1]) + good[27:]
    assert "residue" in check(pkt, 0x0800, "egress", TC_ACT_UNSPEC, bad_csum, 0, False)
    assert "address" in check(pkt, 0x0800, "egress", TC_ACT_UNSPEC, pkt, 0, False)
    assert "drop reasons" in check(pkt, 0x0800, "egress", TC_ACT_SHOT, pkt, 0, False)
    assert "verdict" in check(pkt, 0x0800, "egress", 0, good, 0, False)
    unmatched = bytes(IP(src="8.0.9.9", dst="192.168.2.2") / UDP() / Raw(b"x"))
    assert "dropped" in check(unmatched, 0x0800, "egress", TC_ACT_SHOT, unmatched, 1, False)
    changed = unmatched[:-1] + b"y"
    assert "changed" in check(unmatched, 0x0800, "egress", TC_ACT_UNSPEC, changed, 0, False)
