"""Two TCP connections joined in the kernel: splice(2) through one pipe per direction.

Bytes go socket -> pipe -> socket without being copied into Python. Everything
is non-blocking and driven by the asyncio loop's readiness callbacks, so one
thread holds thousands of connections. What a client relies on is kept:

- end of stream (FIN) on one side becomes shutdown(SHUT_WR) on the other, and
  the other direction goes on (half-close);
- a reset on one side becomes a reset on the other (SO_LINGER 0, then close);
- every leg has TCP keepalive, so an idle connection stays open and a dead
  peer is found.

Every close goes through `forget`, which drops the fd from the loop first: an fd
number is reused at once, and a stale registration would steal the new one's events.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
from collections.abc import Callable

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 18  # 256 KiB per direction: a few round trips of a fast tunnel in flight
BURST = 32  # splices per callback before other connections get their turn
KEEPALIVE = (60, 15, 4)  # idle seconds, interval, probes: a dead peer is found in ~2 min

UPSTREAM = "upstream"  # from the connection that was accepted toward the far end
DOWNSTREAM = "downstream"


def tune(sock: socket.socket, inherited: bool = False) -> None:
    """Non-blocking, no Nagle delay, keepalive on.

    inherited: an accepted socket, which has the options of its listener (Linux
    copies them), so only blocking mode is left to set.
    """
    sock.setblocking(False)
    if inherited:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


# Empty pipes kept for the next connection: making one is four syscalls.
_PIPES: list[tuple[int, int]] = []
PIPE_POOL = 256


def _take_pipe() -> tuple[int, int]:
    if _PIPES:
        return _PIPES.pop()
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # the default pipe size works, just with more wakeups
    return rfd, wfd


def _give_pipe(rfd: int, wfd: int, empty: bool) -> None:
    if empty and len(_PIPES) < PIPE_POOL:
        _PIPES.append((rfd, wfd))
    else:
        os.close(rfd)
        os.close(wfd)


def forget(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Drop the socket's fd from the loop (before it is closed)."""
    fd = sock.fileno()
    if fd >= 0:
        loop.remove_reader(fd)
        loop.remove_writer(fd)


def close(loop: asyncio.AbstractEventLoop, sock: socket.socket, reset: bool = False) -> None:
    """Close the socket; with reset, the other end gets a RST instead of a FIN."""
    if sock.fileno() < 0:
        return
    forget(loop, sock)
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    sock.close()


class _Direction:
    """src -> pipe -> dst until end of stream or an error."""

    def __init__(self, joint: Joint, src: socket.socket, dst: socket.socket, name: str) -> None:
        self.joint = joint
        self.loop = joint.loop
        self.src, self.dst = src, dst
        self.name = name
        self.rfd, self.wfd = _take_pipe()
        self.pending = 0  # bytes in the pipe
        self.eof = False
        self.done = False
        self.started = False
        self.waiting: tuple[str, int] | None = None
        # Bytes to send on dst before anything else (a pipe's one-byte reply), if any.
        self.prefix = b""

    def start(self) -> None:
        self.started = True
        self.run()

    def run(self) -> None:
        if self.done or self.joint.closed:
            return
        src, dst = self.src.fileno(), self.dst.fileno()
        for _ in range(BURST):
            if self.pending:
                if self.prefix and not self._send_prefix(socket.MSG_MORE):
                    return
                try:
                    n = os.splice(self.rfd, dst, self.pending, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    self._wait("w", dst)
                    return
                except OSError as e:
                    self.joint.fail(e)
                    return
                self.pending -= n
                self.joint.count(self.name, n)
                continue
            if self.eof:
                if self.prefix and not self._send_prefix(0):
                    return
                self._unwait()
                self.done = True
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the other side is gone already; its own direction reports it
                self.joint.direction_done()
                return
            try:
                n = os.splice(src, self.wfd, PIPE_BYTES, flags=SPLICE_FLAGS)
            except BlockingIOError:
                self._wait("r", src)
                return
            except OSError as e:
                self.joint.fail(e)
                return
            if n == 0:
                self.eof = True
            else:
                self.pending += n
        # A long transfer: let the other connections run, then go on.
        self._unwait()
        self.loop.call_soon(self.run)

    def _send_prefix(self, flags: int) -> bool:
        # Sent before any other byte on a fresh socket: its send buffer has room.
        try:
            self.dst.send(self.prefix, flags)
        except OSError as e:
            self.joint.fail(e)
            return False
        self.prefix = b""
        return True

    def flush_prefix(self) -> None:
        """Send the prefix now if no bytes have carried it yet."""
        if self.prefix and not self.done and not self.joint.closed:
            self._send_prefix(0)

    def _wait(self, kind: str, fd: int) -> None:
        if self.waiting == (kind, fd):
            return
        self._unwait()
        if kind == "r":
            self.loop.add_reader(fd, self.run)
        else:
            self.loop.add_writer(fd, self.run)
        self.waiting = (kind, fd)

    def _unwait(self) -> None:
        if self.waiting is None:
            return
        kind, fd = self.waiting
        if kind == "r":
            self.loop.remove_reader(fd)
        else:
            self.loop.remove_writer(fd)
        self.waiting = None

    def release(self) -> None:
        self._unwait()
        self.done = True
        _give_pipe(self.rfd, self.wfd, empty=self.pending == 0)


class Joint:
    """An accepted connection and the connection made for it, joined both ways.

    `start_up` and `start_down` start each direction; they may start apart (the
    far side's one-byte reply is read before the down direction starts).
    on_bytes(direction, n) counts; on_close(reset) runs once when both
    directions have ended (reset False) or either side failed (reset True).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, near: socket.socket, far: socket.socket,
                 on_bytes: Callable[[str, int], None],
                 on_close: Callable[[bool], None]) -> None:
        self.loop = loop
        self.near, self.far = near, far
        self.on_bytes = on_bytes
        self.on_close = on_close
        self.closed = False
        self.error: int | None = None  # errno of the failure that closed the joint
        self.up = _Direction(self, near, far, UPSTREAM)
        self.down = _Direction(self, far, near, DOWNSTREAM)

    def start_up(self) -> None:
        self.up.start()

    def start_down(self) -> None:
        self.down.start()

    def count(self, direction: str, n: int) -> None:
        self.on_bytes(direction, n)

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self.close(reset=False)

    def fail(self, err: OSError) -> None:
        # A reset (or any error: a keepalive timeout, no route) on one leg resets the
        # other, so that the client sees the failure instead of a clean end of stream.
        self.error = err.errno
        self.close(reset=True)

    def close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.release()
        self.down.release()
        close(self.loop, self.near, reset)
        close(self.loop, self.far, reset)
        self.on_close(reset)
