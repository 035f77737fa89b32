"""The dataplane on real devices: bulk TCP and UDP through veth with offloads.

Test runs never see CHECKSUM_PARTIAL packets; here they do. Topology:

  A [a0: natgw, TSO on] -- [b0] B router [b1: tx csum off] -- [c0: rx csum off] C
   10.244.1.2/24                                                 10.244.3.4/24

A and C both live in 10.244.0.0/16. natgw on a0 shows C to A as 10.245.3.0/24
and A to C as 10.246.1.0/24. A's egress is TSO/GSO with partial checksums;
B's b1 computes checksums in software and C's c0 verifies them, so a bad
pseudo-header update shows up as a checksum error in C (and vice versa: b0
sends complete checksums that natgw updates on a0 ingress, verified in A).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading

import pytest

from natgw.dataplane import Dataplane, Mapping
from natgw.netns import netns_socket

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

A_REAL, A_SEEN_BY_C = "10.244.1.2", "10.246.1.2"
C_REAL, C_SEEN_BY_A = "10.244.3.4", "10.245.3.4"
BULK = 16 * 1024 * 1024


def sh(ns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True,
                          text=True, timeout=30).stdout


def ethtool(ns: str, dev: str, *features: str) -> None:
    sh(ns, "ethtool", "-K", dev, *features)


def csum_errors(ns: str) -> dict[str, int]:
    out = sh(ns, "nstat", "-az", "TcpInCsumErrors", "UdpInCsumErrors", "Ip6InCsumErrors")
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
            if line and not line.startswith("#")}


@pytest.fixture()
def topo(netns_lab):
    lab = netns_lab
    a, b, c = lab.netns("A"), lab.netns("B"), lab.netns("C")
    a0, b0 = lab.veth(a, f"{A_REAL}/24", b, "10.244.1.1/24")
    b1, c0 = lab.veth(b, "10.244.3.1/24", c, f"{C_REAL}/24")
    sh(b, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(a, "ip", "route", "add", "10.245.3.0/24", "via", "10.244.1.1")
    sh(b, "ip", "route", "add", "10.246.1.0/24", "via", A_REAL)
    sh(c, "ip", "route", "add", "10.246.1.0/24", "via", "10.244.3.1")
    ethtool(a, a0, "tso", "on", "gso", "on", "tx", "on")
    ethtool(b, b0, "tx", "off")
    ethtool(b, b1, "tx", "off")
    ethtool(c, c0, "rx", "off")
    ethtool(a, a0, "rx", "off")

    dp = Dataplane.load(lab.name("gw"))
    lab.on_cleanup(dp.destroy)
    dp.attach(a0, netns=a, mtu=1400)  # MSS 1360: both SYN and SYN-ACK get clamped
    lab.on_cleanup(lambda: dp.detach(a0, netns=a))
    dp.set_mappings(a0, [Mapping.parse("remote", "10.244.3.0/24", "10.245.3.0/24"),
                         Mapping.parse("local", "10.244.1.0/24", "10.246.1.0/24")], netns=a)
    return {"a": a, "b": b, "c": c, "a0": a0, "c0": c0, "dp": dp}


def serve_tcp(ns: str, port: int, result: dict, ready: threading.Event) -> None:
    """Accept one connection, hash what arrives, send the digest back."""
    with netns_socket(ns, socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1)
        srv.settimeout(20)
        ready.set()
        conn, peer = srv.accept()
        with conn:
            conn.settimeout(20)
            h = hashlib.sha256()
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
                if len(chunk) == 0:
                    break
            result["peer"] = peer[0]
            result["digest"] = h.hexdigest()


def test_bulk_tcp_through_tso_veth_keeps_checksums_valid(topo):
    a, c = topo["a"], topo["c"]
    before = {ns: csum_errors(ns) for ns in (a, c)}
    result: dict = {}
    ready = threading.Event()
    server = threading.Thread(target=serve_tcp, args=(c, 5201, result, ready))
    server.start()
    assert ready.wait(10)
    data = os.urandom(BULK)
    with netns_socket(a, socket.AF_INET, socket.SOCK_STREAM) as cli:
        cli.settimeout(20)
        cli.connect((C_SEEN_BY_A, 5201))
        cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        server.join(30)
    assert result["digest"] == hashlib.sha256(data).hexdigest()
    assert result["peer"] == A_SEEN_BY_C  # C sees A under A's remapped address
    for ns in (a, c):
        assert csum_errors(ns) == before[ns], f"checksum errors in {ns}"
    counters = topo["dp"].counters()
    remote = next(m for m in counters if m.mapping.kind == "remote")
    assert counters[remote]["egress"].bytes > BULK  # GSO super-packets counted in full
    assert topo["dp"].tables.device_stats(topo["dp"].ifindex(topo["a0"], a))["mss_clamped"] == 2


def test_bulk_udp_both_ways_keeps_checksums_valid(topo):
    a, c = topo["a"], topo["c"]
    before = {ns: csum_errors(ns) for ns in (a, c)}
    with netns_socket(c, socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            netns_socket(a, socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind(("0.0.0.0", 5300))
        srv.settimeout(5)
        cli.settimeout(5)
        cli.connect((C_SEEN_BY_A, 5300))
        for i in range(200):
            payload = i.to_bytes(2, "big") + os.urandom(1200)
            cli.send(payload)
            got, peer = srv.recvfrom(2048)
            assert got == payload and peer[0] == A_SEEN_BY_C
            srv.sendto(got[::-1], peer)  # the reply crosses a0's ingress
            assert cli.recv(2048) == payload[::-1]
    for ns in (a, c):
        assert csum_errors(ns) == before[ns], f"checksum errors in {ns}"
