"""Properties of the translation, over random prefixes, addresses, ports and sizes.

For any mappings, a packet translated on egress and its reply translated on
ingress give back the original endpoints, host bits are kept, and every
checksum verifies (scapy recomputes them and must get the same bytes). For
any set of prefixes, the one that translates is the longest holding the
address.
"""

from __future__ import annotations

import ipaddress

import pytest
from bpf_run import LO_IFINDEX, TC_ACT_UNSPEC, Runner, run_gateway_name
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from natgw.dataplane import Dataplane, Mapping, layout
from natgw.netmap import netmap

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def runner():
    dp = Dataplane.load(run_gateway_name() + "p")
    dp.tables.set_device(LO_IFINDEX, 14, 0, 0)
    try:
        yield Runner(dp)
    finally:
        dp.destroy()


@st.composite
def network(draw, version: int, plen: int):
    bits = 32 if version == 4 else 128
    raw = draw(st.integers(0, 2**bits - 1))
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((raw >> (bits - plen) << (bits - plen), plen))


@st.composite
def host_in(draw, net):
    return net.network_address + draw(st.integers(0, net.num_addresses - 1))


@st.composite
def scenario(draw):
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    rplen = draw(st.integers(0, bits))
    lplen = draw(st.integers(0, bits))
    remote = Mapping("remote", draw(network(version, rplen)), draw(network(version, rplen)))
    local = Mapping("local", draw(network(version, lplen)), draw(network(version, lplen)))
    src = draw(host_in(local.cidr))
    dst = draw(host_in(remote.as_))
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    sport, dport = draw(st.integers(1, 65535)), draw(st.integers(1, 65535))
    payload = draw(st.binary(min_size=0, max_size=1400))
    return remote, local, src, dst, proto, sport, dport, payload


def build(src, dst, proto, sport, dport, payload):
    ip = IP(src=str(src), dst=str(dst)) if src.version == 4 else IPv6(src=str(src), dst=str(dst))
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags="PA")
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=dport)
    else:
        l4 = ICMP(id=sport) if src.version == 4 else ICMPv6EchoRequest(id=sport)
    return ip / l4 / Raw(payload)


def host_bits(addr, net) -> int:
    return int(addr) & (net.num_addresses - 1)


def checksums_verify(raw: bytes) -> bool:
    """scapy, asked to recompute every checksum, produces the same bytes."""
    pkt = (IPv6 if raw[0] >> 4 == 6 else IP)(raw)
    for layer in (IP, TCP, UDP, ICMP):
        if pkt.haslayer(layer):
            del pkt[layer].chksum
    if pkt.haslayer(ICMPv6EchoRequest):
        del pkt[ICMPv6EchoRequest].cksum
    return bytes(pkt.__class__(bytes(pkt))) == raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(scenario())
def test_there_and_back_is_identity(runner, s):
    remote, local, src, dst, proto, sport, dport, payload = s
    runner.dp.tables.set_mappings(LO_IFINDEX, [remote, local])

    pkt = build(src, dst, proto, sport, dport, payload)
    out = runner.run("egress", pkt)
    assert out.verdict == TC_ACT_UNSPEC
    assert checksums_verify(out.out)
    sent = (IPv6 if src.version == 6 else IP)(out.out)
    new_src, new_dst = ipaddress.ip_address(sent.src), ipaddress.ip_address(sent.dst)
    assert new_src in local.as_ and host_bits(new_src, local.as_) == host_bits(src, local.cidr)
    assert new_dst in remote.cidr and host_bits(new_dst, remote.cidr) == host_bits(
        dst, remote.as_)

    # The peer answers the translated packet; ingress must restore our view.
    reply = build(new_dst, new_src, proto, dport, sport, payload)
    back = runner.run("ingress", reply)
    assert back.verdict == TC_ACT_UNSPEC
    assert checksums_verify(back.out)
    assert back.out == bytes(build(dst, src, proto, dport, sport, payload))


# -- longest prefix, against an oracle ------------------------------------------------


def longest_match(nets, addr):
    """The oracle: the longest of `nets` holding `addr`, None if none does."""
    holding = [n for n in nets if addr in n]
    return max(holding, key=lambda n: n.prefixlen) if holding else None


@st.composite
def prefix_set(draw):
    """Remote mappings whose "as" prefixes nest around one address (so that many
    lengths hold it), plus scattered ones; and an address near that one."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    base = draw(st.integers(0, 2**bits - 1))
    lengths = draw(st.lists(st.integers(0, bits), min_size=1, max_size=14, unique=True))
    nested = [cls((base >> (bits - n) << (bits - n), n)) for n in lengths]
    scattered = draw(st.lists(network(version, draw(st.integers(0, bits))), max_size=4))
    as_nets = list(dict.fromkeys(nested + scattered))
    # Distinct real ranges too (a shared ingress key would conflict): one per mapping.
    cidrs = [cls(((i * 0x9E3779B97F4A7C15 + 1) % 2**bits >> (bits - n.prefixlen)
                  << (bits - n.prefixlen), n.prefixlen)) for i, n in enumerate(as_nets)]
    if len(set(cidrs)) != len(cidrs):
        cidrs = [draw(network(version, n.prefixlen)) for n in as_nets]
    flip = draw(st.integers(0, bits)) if draw(st.booleans()) else bits
    addr = ipaddress.ip_address((base ^ (draw(st.integers(0, 2**bits - 1)) >> flip))
                                .to_bytes(bits // 8, "big"))
    return [Mapping("remote", c, a) for c, a in zip(cidrs, as_nets, strict=True)], addr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(prefix_set())
def test_lookup_is_longest_prefix(runner, s):
    """The dataplane (and `natgw lookup`'s Tables.lookup) pick the longest "as"
    prefix holding the destination, whatever prefix lengths the table holds."""
    mappings, addr = s
    assume(int(addr) != 0)  # scapy takes "::" for a name to resolve
    # Two mappings sharing their ingress key (the cidr) are refused as a conflict.
    assume(len({m.cidr for m in mappings}) == len(mappings))
    runner.dp.tables.set_mappings(LO_IFINDEX, mappings)
    best = longest_match([m.as_ for m in mappings], addr)
    cidr = {m.as_: m.cidr for m in mappings}
    other = ipaddress.ip_address("192.0.2.9" if addr.version == 4 else "2001:db8::9")
    pkt = build(other, addr, "udp", 7, 9, b"lpm")
    out = runner.run("egress", pkt)
    want = addr if best is None else netmap(addr, cidr[best])
    assert out.out == bytes(build(other, want, "udp", 7, 9, b"lpm"))
    table = layout.table(layout.DIR_EGRESS, layout.SIDE_DST)
    found = runner.dp.tables.lookup(LO_IFINDEX, table, addr)
    assert (found is None) == (best is None)
    assert runner.dp.tables.plens(LO_IFINDEX, addr.version, table) == {
        m.as_.prefixlen for m in mappings}
