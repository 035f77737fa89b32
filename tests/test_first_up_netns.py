"""During a gateway's first `up`, no packet crosses with a real (untranslated) address:
the programs and mappings are in place before its tunnel can carry anything."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import threading
import time

import pytest
from gateways import C1_SEEN_BY_C2, POD, build

from lab.net import natgw
from natgw.netns import netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

ETH_P_ALL = 0x0003
PORT = 7300


def sniff(ns: str, ifname: str, stop: threading.Event, seen: list, l2: bool) -> None:
    """(src, dst) of every UDP datagram to PORT crossing ifname in ns."""
    with netns_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((ifname, 0))
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                frame = s.recv(2048)
            except TimeoutError:
                continue
            ip = frame[14:] if l2 else frame
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 0x0F) * 4
            if struct.unpack("!H", ip[ihl + 2:ihl + 4])[0] == PORT:
                seen.append((str(ipaddress.ip_address(ip[12:16])),
                             str(ipaddress.ip_address(ip[16:20]))))


def test_first_up_lets_nothing_untranslated_through(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    c1, c2 = build(netns_lab, tmp_path)
    r = natgw("--netns", c2.gw, "up", str(c2.config), "--detach", check=False)
    assert r.returncode == 0, r.stderr
    stop = threading.Event()
    at_pod1: list = []
    pod1_if = [i for i in socket_if_names(c1.pod) if i != "lo"][0]
    sniffer = threading.Thread(target=sniff, args=(c1.pod, pod1_if, stop, at_pod1, True))
    sniffer.start()
    # pod2 keeps sending to pod1 (as cluster 2 sees it) while cluster 1 comes up.
    with netns_socket(c2.pod, socket.AF_INET, socket.SOCK_DGRAM) as tx:
        def send():
            while not stop.is_set():
                tx.sendto(b"x" * 32, (C1_SEEN_BY_C2, PORT))
                time.sleep(0.001)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            time.sleep(0.3)
            r = natgw("--netns", c1.gw, "up", str(c1.config), "--detach", check=False)
            assert r.returncode == 0, r.stderr
            deadline = time.time() + 20
            while time.time() < deadline and not any(src != POD for src, _ in at_pod1):
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            sender.join()
            sniffer.join()
    # Translated: pod1 sees pod2 as 10.245.1.10, never as its own (real) 10.244.1.10.
    srcs = {src for src, dst in at_pod1 if dst == POD}
    assert srcs == {"10.245.1.10"}, srcs


def socket_if_names(ns: str) -> list[str]:
    import json
    import subprocess

    return [link["ifname"] for link in json.loads(subprocess.run(
        ["ip", "-n", ns, "-j", "link"], capture_output=True, text=True, check=True).stdout)]
