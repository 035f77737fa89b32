"""Small traffic endpoints the benchmark runs inside the pod namespaces.

    python -m bench.endpoints rr-server   --bind ADDR --port P --seconds T
    python -m bench.endpoints rr-client   --dst ADDR --port P --seconds T [--count N]
    python -m bench.endpoints stream-recv --bind ADDR:PORT [ADDR:PORT ...] --seconds T
    python -m bench.endpoints stream-send --dst ADDR --port P --rate PPS --flows F
                                                --seconds T

Every one stops by itself after --seconds (and on SIGTERM/SIGINT), and prints
one JSON object on stdout. Times are CLOCK_MONOTONIC nanoseconds, which every
network namespace shares, so the benchmark can compare them with its own.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time

from bench.stats import percentile

SEQ = struct.Struct("!Q")
DATAGRAM = 64  # bytes of UDP payload: a sequence number and padding


class _Stop:
    """Set by SIGTERM/SIGINT: the endpoint finishes and prints what it has."""

    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: object) -> None:
        self.flag = True


def rr_server(bind: str, port: int, seconds: float) -> dict:
    """Echo one TCP connection until it closes."""
    stop = _Stop()
    deadline = time.monotonic() + seconds
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(1)
    print(json.dumps({"listening": True}), flush=True)
    peer, echoed = None, 0
    while not stop.flag and time.monotonic() < deadline:
        if not select.select([srv], [], [], 0.2)[0]:
            continue
        conn, addr = srv.accept()
        peer = addr[0]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while not stop.flag:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
                echoed += 1
        except (TimeoutError, OSError):
            pass
        conn.close()
        break
    srv.close()
    return {"peer": peer, "echoed": echoed}


def rr_client(dst: str, port: int, seconds: float, count: int, size: int,
              warmup: int) -> dict:
    """Round trips of `size` bytes over one TCP connection: latency percentiles."""
    stop = _Stop()
    deadline = time.monotonic() + seconds
    sock = None
    while sock is None:  # the server may take a moment to listen
        try:
            sock = socket.create_connection((dst, port), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                return {"error": "connect failed"}
            time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(2)
    msg = b"x" * size
    lat: list[float] = []
    i = 0
    try:
        while i < warmup + count and not stop.flag and time.monotonic() < deadline:
            t0 = time.perf_counter_ns()
            sock.sendall(msg)
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise ConnectionError("server closed")
                got += len(chunk)
            t1 = time.perf_counter_ns()
            if i >= warmup:
                lat.append((t1 - t0) / 1000)
            i += 1
    except (OSError, ConnectionError) as e:
        return {"error": str(e), "n": len(lat)}
    finally:
        sock.close()
    if not lat:
        return {"error": "no round trip", "n": 0}
    lat.sort()
    return {"n": len(lat), "p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99),
            "mean_us": sum(lat) / len(lat), "min_us": lat[0], "max_us": lat[-1]}


def stream_recv(binds: list[tuple[str, int]], seconds: float,
                times_for: frozenset[str] = frozenset()) -> dict:
    """Record every sequence number and the first arrival (time, source) per socket.

    times_for: "ADDR:PORT" names whose every arrival time is kept too.
    """
    stop = _Stop()
    deadline = time.monotonic() + seconds
    socks = []
    for addr, port in binds:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((addr, port))
        s.setblocking(False)
        socks.append(s)
    print(json.dumps({"listening": True}), flush=True)
    first: dict[str, dict] = {}
    seqs: dict[str, list[int]] = {f"{a}:{p}": [] for a, p in binds}
    times: dict[str, list[int]] = {n: [] for n in seqs if n in times_for}
    names = {s.fileno(): f"{a}:{p}" for s, (a, p) in zip(socks, binds, strict=True)}
    while not stop.flag and time.monotonic() < deadline:
        ready = select.select(socks, [], [], 0.05)[0]
        for s in ready:
            name = names[s.fileno()]
            while True:
                try:
                    data, src = s.recvfrom(2048)
                except BlockingIOError:
                    break
                now = time.monotonic_ns()
                if name not in first:
                    first[name] = {"t_ns": now, "src": src[0], "sport": src[1]}
                if len(data) >= SEQ.size:
                    seqs[name].append(SEQ.unpack_from(data)[0])
                if name in times:
                    times[name].append(now)
    for s in socks:
        s.close()
    return {"first": first, "seqs": seqs, "times": times}


def stream_send(dst: str, port: int, rate: float, flows: int, seconds: float) -> dict:
    """Numbered datagrams at `rate` per second, round robin over `flows` source ports."""
    stop = _Stop()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
    pad = b"\0" * (DATAGRAM - SEQ.size)
    start = time.monotonic()
    end = start + seconds
    sent = errors = 0
    tick = 0.001
    while not stop.flag:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate) + 1
        while sent < due:
            try:
                socks[sent % flows].sendto(SEQ.pack(sent) + pad, (dst, port))
            except OSError:
                errors += 1  # e.g. unreachable while the route is missing: still numbered
            sent += 1
        time.sleep(tick)
    for s in socks:
        s.close()
    return {"sent": sent, "errors": errors, "start_ns": int(start * 1e9)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.endpoints")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rr-server")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("rr-client")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100)
    p = sub.add_parser("stream-recv")
    p.add_argument("--bind", nargs="+", required=True, help="ADDR:PORT ...")
    p.add_argument("--times", nargs="*", default=[], help="ADDR:PORT whose arrival times")
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("stream-send")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--flows", type=int, default=1)
    p.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "rr-server":
        out = rr_server(a.bind, a.port, a.seconds)
    elif a.cmd == "rr-client":
        out = rr_client(a.dst, a.port, a.seconds, a.count, a.size, a.warmup)
    elif a.cmd == "stream-recv":
        binds = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in a.bind]
        out = stream_recv(binds, a.seconds, frozenset(a.times))
    else:
        out = stream_send(a.dst, a.port, a.rate, a.flows, a.seconds)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
