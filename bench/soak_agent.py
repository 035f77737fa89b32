"""The soak's traffic in one pod: servers for the other pods, clients toward them.

    python -m bench.soak_agent --me 1 --bind 10.244.1.10 --peer 2=10.112.1.10 \
        --peer 3=10.113.1.10 --seconds 600 --out DIR

Run inside a pod namespace. Toward every peer it keeps going, from
--start-delay until --seconds:

- numbered UDP (UDP_PORT): datagrams carrying (sender, sequence number), each
  send time kept, so that the soak counts loss exactly and knows when a lost
  datagram left;
- TCP bulk (BULK_PORT): a paced, deterministic pseudo-random stream per
  connection; the receiver regenerates it from the seed in the header and
  counts every byte that differs, and both sides hash what they saw;
- short TCP connections (SHORT_PORT): connect, 32 bytes echoed, close.

Servers keep listening LINGER seconds longer, so that nothing in flight is
counted lost. At the end (or on SIGTERM) it writes DIR/agent-<me>.json and
DIR/udp-<me>-<peer>.times (the send times, float64 CLOCK_MONOTONIC seconds,
which every namespace shares). Received sequence numbers are written as
[first, last] runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import struct
import threading
import time
from array import array
from pathlib import Path

from bench.soak_stats import ranges

UDP_PORT, BULK_PORT, SHORT_PORT = 9201, 9202, 9203
DATAGRAM = struct.Struct("!BQ")  # sender, sequence number
UDP_SIZE = 64
BULK_HEADER = struct.Struct("!BIQ")  # sender, connection number, seed
BLOCK = 65536
CHUNK = 16384
SNDBUF = 65536
SHORT_SIZE = 32
LINGER = 3.0


class Stream:
    """The bulk stream of a seed: byte o is the same whoever reads it, in any chunks."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._k = -1
        self._block = b""

    def block(self, k: int) -> bytes:
        if k != self._k:
            self._k = k
            self._block = random.Random(self.seed * 1_000_003 + k).randbytes(BLOCK)
        return self._block

    def read(self, offset: int, n: int) -> bytes:
        out = []
        while n > 0:
            k, o = divmod(offset, BLOCK)
            part = self.block(k)[o:o + n]
            out.append(part)
            offset += len(part)
            n -= len(part)
        return b"".join(out)


def corrupted(got: bytes, want: bytes) -> int:
    """Bytes of `got` that differ from `want` at the same offset."""
    if got == want:
        return 0
    return sum(1 for a, b in zip(got, want, strict=False) if a != b)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.me = args.me
        self.bind = args.bind
        self.peers = dict(args.peer)  # cluster -> address
        self.t0 = time.monotonic() + args.start_delay
        self.t_end = time.monotonic() + args.seconds
        self.args = args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.udp_times = {j: array("d") for j in self.peers}
        self.udp_send_errors = dict.fromkeys(self.peers, 0)
        self.udp_received: dict[int, list[list[int]]] = {}
        self.udp_dups: dict[int, int] = {}
        self.bulk_sent: list[dict] = []
        self.bulk_received: list[dict] = []
        self.short = {j: {"ok": 0, "fail_times": [], "errors": {}} for j in self.peers}

    def sending(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.t_end

    def serving(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.t_end + LINGER

    def wait_start(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.t0:
            time.sleep(0.05)

    # -- UDP ---------------------------------------------------------------------

    def udp_send(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pad = b"\0" * (UDP_SIZE - DATAGRAM.size)
        self.wait_start()
        start, k = time.monotonic(), 0
        while self.sending():
            due = start + k / self.args.udp_pps
            if (d := due - time.monotonic()) > 0:
                time.sleep(d)
            for j, addr in self.peers.items():
                times = self.udp_times[j]
                seq = len(times)
                times.append(time.monotonic())
                try:
                    sock.sendto(DATAGRAM.pack(self.me, seq) + pad, (addr, UDP_PORT))
                except OSError:  # e.g. no route while a route is deleted: lost, counted
                    self.udp_send_errors[j] += 1
            k += 1
        sock.close()

    def udp_recv(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((self.bind, UDP_PORT))
        sock.settimeout(0.2)
        seen: dict[int, bytearray] = {}
        while self.serving():
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            if len(data) < DATAGRAM.size:
                continue
            src, seq = DATAGRAM.unpack_from(data)
            bits = seen.setdefault(src, bytearray())
            if seq >= len(bits) * 8:
                bits.extend(bytes(seq // 8 + 1 - len(bits) + 1024))
            if bits[seq >> 3] & (1 << (seq & 7)):
                self.udp_dups[src] = self.udp_dups.get(src, 0) + 1
            bits[seq >> 3] |= 1 << (seq & 7)
        sock.close()
        self.udp_received = {src: ranges(b * 8 + i for b, byte in enumerate(bits) if byte
                                         for i in range(8) if byte >> i & 1)
                             for src, bits in seen.items()}

    # -- TCP bulk ------------------------------------------------------------------

    def bulk_client(self, j: int) -> None:
        self.wait_start()
        conn_no = 0
        interval = CHUNK / (self.args.bulk_kib * 1024)
        while self.sending():
            conn_no += 1
            seed = random.getrandbits(48)
            rec = {"peer": j, "conn": conn_no, "seed": seed, "sent": 0, "sha": "",
                   "error": "", "start": time.monotonic()}
            stream, sha = Stream(seed), hashlib.sha256()
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    # A small send buffer and no catching up after a stall: when a
                    # fault ends, the stream resumes at its pace instead of bursting
                    # a backlog through the tunnel (which would drown the UDP).
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
                    s.settimeout(5)
                    s.connect((self.peers[j], BULK_PORT))
                    s.settimeout(30)
                    s.sendall(BULK_HEADER.pack(self.me, conn_no, seed))
                    due = time.monotonic()
                    while self.sending():
                        chunk = stream.read(rec["sent"], CHUNK)
                        s.sendall(chunk)
                        sha.update(chunk)
                        rec["sent"] += len(chunk)
                        due = max(due + interval, time.monotonic() - interval)
                        if (d := due - time.monotonic()) > 0:
                            time.sleep(d)
                    s.shutdown(socket.SHUT_WR)
                    s.recv(1)  # the server closes after it has read everything
            except OSError as e:
                rec["error"] = f"{type(e).__name__}: {e}"
                time.sleep(0.5)
            rec["sha"] = sha.hexdigest()
            rec["end"] = time.monotonic()
            with self.lock:
                self.bulk_sent.append(rec)

    def bulk_conn(self, conn: socket.socket) -> None:
        rec = {"src": None, "conn": None, "received": 0, "corrupted": 0, "sha": "",
               "error": ""}
        sha = hashlib.sha256()
        try:
            conn.settimeout(60)
            head = b""
            while len(head) < BULK_HEADER.size:
                part = conn.recv(BULK_HEADER.size - len(head))
                if not part:
                    raise ConnectionError("closed before its header")
                head += part
            src, conn_no, seed = BULK_HEADER.unpack(head)
            rec |= {"src": src, "conn": conn_no}
            stream = Stream(seed)
            while data := conn.recv(65536):
                rec["corrupted"] += corrupted(data, stream.read(rec["received"], len(data)))
                sha.update(data)
                rec["received"] += len(data)
        except OSError as e:
            rec["error"] = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        rec["sha"] = sha.hexdigest()
        with self.lock:
            self.bulk_received.append(rec)

    # -- short connections ---------------------------------------------------------

    def short_client(self, j: int) -> None:
        self.wait_start()
        start, k = time.monotonic(), 0
        rec = self.short[j]
        while self.sending():
            due = start + k / self.args.conns_per_s
            if (d := due - time.monotonic()) > 0:
                time.sleep(d)
            k += 1
            t = time.monotonic()
            msg = os.urandom(SHORT_SIZE)
            try:
                with socket.create_connection((self.peers[j], SHORT_PORT), timeout=3) as s:
                    s.settimeout(3)
                    s.sendall(msg)
                    got = b""
                    while len(got) < SHORT_SIZE and (part := s.recv(SHORT_SIZE - len(got))):
                        got += part
                if got != msg:
                    raise ConnectionError("echo differs")
                rec["ok"] += 1
            except OSError as e:
                rec["fail_times"].append(t)
                kind = type(e).__name__
                rec["errors"][kind] = rec["errors"].get(kind, 0) + 1

    def short_conn(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            got = b""
            while len(got) < SHORT_SIZE and (part := conn.recv(SHORT_SIZE - len(got))):
                got += part
            conn.sendall(got)
        except OSError:
            pass  # the client counts its failures
        finally:
            conn.close()

    # -- servers -------------------------------------------------------------------

    def serve(self, port: int, handler) -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.bind, port))
        srv.listen(64)
        srv.settimeout(0.2)
        while self.serving():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
        srv.close()

    # -- run -----------------------------------------------------------------------

    def run(self) -> None:
        threads = [threading.Thread(target=self.udp_recv),
                   threading.Thread(target=self.serve, args=(BULK_PORT, self.bulk_conn)),
                   threading.Thread(target=self.serve, args=(SHORT_PORT, self.short_conn)),
                   threading.Thread(target=self.udp_send)]
        for j in self.peers:
            threads.append(threading.Thread(target=self.bulk_client, args=(j,)))
            threads.append(threading.Thread(target=self.short_client, args=(j,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)  # bulk connection threads finish after their last read

    def write(self, out: Path) -> None:
        for j, times in self.udp_times.items():
            with open(out / f"udp-{self.me}-{j}.times", "wb") as f:
                times.tofile(f)
        with self.lock:
            result = {"me": self.me, "udp_sent": {j: len(t) for j, t in self.udp_times.items()},
                      "udp_send_errors": self.udp_send_errors,
                      "udp_received": self.udp_received, "udp_dups": self.udp_dups,
                      "bulk_sent": self.bulk_sent, "bulk_received": self.bulk_received,
                      "short": self.short}
        tmp = out / f"agent-{self.me}.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(out / f"agent-{self.me}.json")


def _peer(text: str) -> tuple[int, str]:
    j, _, addr = text.partition("=")
    return int(j), addr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak_agent")
    p.add_argument("--me", type=int, required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--peer", type=_peer, action="append", required=True, metavar="J=ADDR")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--start-delay", type=float, default=2.0)
    p.add_argument("--udp-pps", type=float, default=100.0)
    p.add_argument("--bulk-kib", type=float, default=256.0)
    p.add_argument("--conns-per-s", type=float, default=4.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    agent = Agent(args)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    agent.run()
    agent.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
