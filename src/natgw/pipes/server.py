"""The pipes of one gateway: listeners, access rules, chains. Run by the foreground `up`.

    server = PipeServer(netns)
    server.start()                                  # a thread in the gateway's netns
    errors = server.apply(plan_for(cfg, config))    # again after each reload
    server.stop()

All sockets are made by one thread that has entered the gateway's network
namespace (setns affects only the calling thread, and a socket stays in the
namespace it was made in), so natgw itself keeps running from the root mount
namespace like the rest of `up --netns`. That thread runs an asyncio loop;
the bytes themselves move in the kernel (natgw.pipes.relay).

A connection accepted on a pipe's own port is sent on: to `remote` directly, or
through the tunnel to the natgw of `peer` with a request (natgw.pipes.protocol).
A request that arrives from a peer is served only if this gateway's file has a
pipe of that name whose `from:` names the peer; the peer is known by the tunnel
device and source address it arrived with (natgw.tunnel_address).

`apply` changes only what changed: an unchanged pipe keeps its listener and
its connections; the connections of a removed or changed pipe are reset.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
import socket
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from typing import Any

from natgw.config import GatewayConfig, HostPort, Pipe
from natgw.netns import enter_netns
from natgw.pipes import relay
from natgw.pipes.protocol import (
    MAX_HOPS,
    PIPE_PORT,
    PREFIX_LEN,
    ProtocolError,
    Request,
    Status,
    parse_text,
    text_length,
)
from natgw.tunnel_address import tunnel_address

log = logging.getLogger("natgw")

CONNECT_TIMEOUT = 5.0  # seconds to connect to a far end or the next gateway
RESOLVE_TIMEOUT = 5.0  # seconds to resolve a remote's host name
REQUEST_TIMEOUT = 5.0  # a peer has this long to send its whole request
REPLY_TIMEOUT = 15.0  # the far side's reply: its own connect, or a chain's
OK_DELAY = 0.05  # seconds an OK reply may wait to share a segment with the first bytes back
BACKLOG = 1024
ACCEPT_BURST = 64
LOGGED_MAX = 1024  # refusals logged once per (peer, pipe, reason), up to this many
LOCAL = "local"  # the peer label of connections accepted on a pipe's own port
UNKNOWN = "(unknown)"  # the pipe label of requests for a pipe this file does not name


@dataclass(frozen=True)
class Tunnel:
    """A WireGuard peer (or hub client) pipes may go to or come from."""

    peer: str
    device: str
    public_key: str

    @property
    def address(self) -> IPv6Address:
        return tunnel_address(self.public_key)


@dataclass(frozen=True)
class Plan:
    """What the server serves: the file's pipes and the tunnels they run over."""

    gateway: str
    public_key: str | None
    pipes: tuple[Pipe, ...] = ()
    tunnels: tuple[Tunnel, ...] = ()
    config: str = ""

    @property
    def address(self) -> IPv6Address | None:
        return tunnel_address(self.public_key) if self.public_key else None


def plan_for(cfg: GatewayConfig, config: str = "") -> Plan:
    """The plan of a config: no pipes, no tunnel listeners (and no pipe addresses).

    Every tunnel peer has its own device; a hub's clients share the hub's one
    device, where each is told apart by its pipe address (cryptokey routing
    admits that source only from the client whose key it derives from).
    """
    if not cfg.pipes:
        return Plan(cfg.name, cfg.public_key, (), (), config)
    tunnels = [Tunnel(p.name, p.device, p.public_key) for p in cfg.tunnel_peers
               if p.public_key]
    if cfg.hub is not None:
        tunnels += [Tunnel(c.name, cfg.hub.device, c.public_key) for c in cfg.hub.clients
                    if c.public_key]
    return Plan(cfg.name, cfg.public_key, tuple(cfg.pipes), tuple(tunnels), config)


@dataclass
class Stats:
    """Counters read by metrics and status (copied in the loop's thread)."""

    connections: Counter = field(default_factory=Counter)  # (pipe, peer, result)
    bytes: Counter = field(default_factory=Counter)  # (pipe, direction)
    active: Counter = field(default_factory=Counter)  # pipe


class _Conn:
    """One accepted connection through its life: dialing, then joined."""

    def __init__(self, server: PipeServer, pipe: str, asker: str, near: socket.socket) -> None:
        self.server = server
        self.pipe = pipe
        self.asker = asker
        self.near = near
        self.far: socket.socket | None = None
        self.joint: relay.Joint | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.established = False

    def join(self, far: socket.socket) -> relay.Joint:
        self.far = far
        self.joint = relay.Joint(self.server.loop, self.near, far, self._count, self._joint_closed)
        return self.joint

    def _count(self, direction: str, n: int) -> None:
        self.server.stats.bytes[(self.pipe, direction)] += n

    def _joint_closed(self, reset: bool) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(False)
        self.server._untrack(self)

    def close(self, reset: bool, near_reset: bool | None = None) -> None:
        """Close both legs (near_reset: how to close the near one, default as the far one)."""
        loop = self.server.loop
        if self.joint is not None and not self.joint.closed:
            self.joint.closed = True
            self.joint.up.release()
            self.joint.down.release()
        relay.close(loop, self.near, reset if near_reset is None else near_reset)
        if self.far is not None:
            relay.close(loop, self.far, reset)
        self._finish()


class PipeServer:
    """Serves a Plan from a thread of its own inside the gateway's netns."""

    def __init__(self, netns: str | None = None,
                 publish: Callable[[dict], None] | None = None) -> None:
        self.netns = netns
        self.publish = publish
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.thread: threading.Thread | None = None
        self.plan = Plan("", None)
        self.pipes: dict[str, Pipe] = {}
        self.listeners: dict[str, socket.socket] = {}  # pipe name -> its own port
        self.listen_errors: dict[str, str] = {}
        self.tunnel_listeners: dict[str, tuple[int, socket.socket]] = {}  # device -> ifindex
        self.tunnels: dict[str, Tunnel] = {}  # peer name -> tunnel
        self.ifindex: dict[str, int] = {}  # tunnel device -> ifindex, as of the last apply
        self.by_source: dict[tuple[str, IPv6Address], str] = {}  # (device, address) -> peer
        self.conns: dict[str, set[_Conn]] = {}
        self.stats = Stats()
        self.reloads = 0
        self.reload_error: str | None = None
        self._logged: set[tuple[str, str, str]] = set()
        self._published: dict | None = None

    # -- life cycle (called from any thread) ------------------------------------------

    def start(self) -> None:
        _raise_fd_limit()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                enter_netns(self.netns)
                loop = asyncio.new_event_loop()
                # Host names resolve in threads that entered the netns too, so that
                # DNS queries leave from the gateway's network, not natgw's own.
                loop.set_default_executor(ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="natgw-resolve",
                    initializer=enter_netns, initargs=(self.netns,)))
                self.loop = loop
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.call_soon(self._publish_tick)
            loop.run_forever()
            loop.close()

        self.thread = threading.Thread(target=run, name="natgw-pipes", daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def apply(self, plan: Plan) -> list[str]:
        """Serve `plan`; returns one line per pipe or tunnel that could not listen."""
        return self._call(self._apply, plan)

    def set_reload(self, error: str | None) -> None:
        """Record the outcome of a reload, for `up --detach` waiting on it."""
        def done() -> None:
            self.reloads += 1
            self.reload_error = error
            self._publish_now()

        self._call(done)

    def snapshot(self) -> dict:
        """What `natgw status` shows (also published to a file)."""
        return self._call(self._snapshot)

    def counters(self) -> tuple[Counter, Counter, dict[str, int]]:
        """Copies of the connection and byte counters, and active connections per pipe."""
        return self._call(lambda: (Counter(self.stats.connections), Counter(self.stats.bytes),
                                   {name: self.stats.active[name] for name in self.pipes}))

    def stop(self) -> None:
        """Stop listening and close every connection (natgw exits)."""
        if self.thread is None:
            return
        try:
            self._call(self._apply, Plan(self.plan.gateway, None, (), (), self.plan.config))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.thread = None

    # -- reconciling (loop thread) --------------------------------------------------------

    def _apply(self, plan: Plan) -> list[str]:
        errors: list[str] = []
        self.plan = plan
        old = self.pipes
        self.pipes = {p.name: p for p in plan.pipes}
        for name, pipe in old.items():
            if self.pipes.get(name) != pipe:
                self._drop_pipe(name)
        for name, pipe in self.pipes.items():
            if old.get(name) == pipe and (name in self.listeners or pipe.bind is None):
                continue
            self.listen_errors.pop(name, None)
            if pipe.bind is None:
                continue
            try:
                self._listen_local(pipe)
            except OSError as e:
                msg = f"pipe {name}: cannot listen on {pipe.bind}: {_strerror(e)}"
                self.listen_errors[name] = msg
                errors.append(msg)
        errors += self._apply_tunnels(plan)
        self._publish_now()
        return errors

    def _drop_pipe(self, name: str) -> None:
        sock = self.listeners.pop(name, None)
        if sock is not None:
            relay.close(self.loop, sock)
        self.listen_errors.pop(name, None)
        for conn in list(self.conns.get(name, ())):
            conn.close(reset=True)
        self.conns.pop(name, None)
        self.stats.active.pop(name, None)

    def _listen_local(self, pipe: Pipe) -> None:
        bind = pipe.bind
        assert bind is not None
        sock = _listening_socket(bind)
        self.listeners[pipe.name] = sock
        self.loop.add_reader(sock.fileno(), self._accept_local, pipe.name, sock)

    def _apply_tunnels(self, plan: Plan) -> list[str]:
        errors = []
        self.tunnels = {t.peer: t for t in plan.tunnels}
        self.by_source = {(t.device, t.address): t.peer for t in plan.tunnels}
        wanted: dict[str, int] = {}
        looked: set[str] = set()  # once per device: a hub's clients all share one
        for t in plan.tunnels:
            if t.device in looked:
                continue
            looked.add(t.device)
            try:
                wanted[t.device] = socket.if_nametoindex(t.device)
            except OSError:
                errors.append(f"pipes: tunnel device {t.device} (peer {t.peer}) not found")
        self.ifindex = wanted
        for device, (ifindex, sock) in list(self.tunnel_listeners.items()):
            if wanted.get(device) != ifindex or plan.address is None:
                relay.close(self.loop, sock)
                del self.tunnel_listeners[device]
        if plan.address is None:
            return errors
        for device, ifindex in wanted.items():
            if device in self.tunnel_listeners:
                continue
            try:
                sock = _tunnel_socket(plan.address, device, ifindex)
            except OSError as e:
                errors.append(f"pipes: cannot listen on [{plan.address}%{device}]:{PIPE_PORT}: "
                              f"{_strerror(e)}")
                continue
            self.tunnel_listeners[device] = (ifindex, sock)
            self.loop.add_reader(sock.fileno(), self._accept_tunnel, device, sock)
        return errors

    # -- accepting ------------------------------------------------------------------------

    def _accept_local(self, name: str, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, _addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # e.g. out of file descriptors: try again on the next wakeup
                self._log_once("accept", name, _strerror(e))
                return
            relay.tune(sock, inherited=True)
            conn = self._track(name, LOCAL, sock)
            self.loop.create_task(self._guarded(conn, self._serve_local(conn)))

    def _accept_tunnel(self, device: str, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._log_once("accept", device, _strerror(e))
                return
            relay.tune(sock, inherited=True)
            source = IPv6Address(addr[0].split("%", 1)[0])
            peer = self.by_source.get((device, source))
            if peer is None:
                # Cryptokey routing admits only the peers' addresses: this is a stale plan.
                self._refuse(sock, UNKNOWN, f"{source}%{device}", Status.BAD_REQUEST,
                             "not a peer's pipe address")
                continue
            conn = _Conn(self, UNKNOWN, peer, sock)  # tracked once the request names a pipe
            self.loop.create_task(self._guarded(conn, self._serve_tunnel(conn)))

    def _track(self, pipe: str, asker: str, sock: socket.socket) -> _Conn:
        conn = _Conn(self, pipe, asker, sock)
        self.conns.setdefault(pipe, set()).add(conn)
        return conn

    def _untrack(self, conn: _Conn) -> None:
        conns = self.conns.get(conn.pipe)
        if conns is not None:
            conns.discard(conn)
        if conn.established:
            self.stats.active[conn.pipe] -= 1

    # -- serving --------------------------------------------------------------------------

    async def _serve_local(self, conn: _Conn) -> None:
        pipe = self.pipes.get(conn.pipe)
        if pipe is None:
            conn.close(reset=True)
            return
        await self._open(conn, pipe, None)

    async def _guarded(self, conn: _Conn, work: Any) -> None:
        """Run a connection's coroutine; whatever goes wrong, its sockets are closed."""
        try:
            await work
        except Exception as e:  # e.g. out of file descriptors for its pipes
            self._log_once(conn.asker, conn.pipe, f"failed: {_strerror(e)}")
            self.stats.connections[(conn.pipe, conn.asker, Status.FAILED.label)] += 1
            conn.close(reset=True)

    async def _serve_tunnel(self, conn: _Conn) -> None:
        peer, sock = conn.asker, conn.near
        try:
            prefix = await self._read_exact(sock, PREFIX_LEN)
            text = await self._read_exact(sock, text_length(prefix))
            request = parse_text(text)
        except (ProtocolError, OSError, TimeoutError, EOFError) as e:
            why = str(e) if isinstance(e, ProtocolError) else "incomplete request"
            self._refuse(sock, UNKNOWN, peer, Status.BAD_REQUEST, why)
            return
        tunnel = self.tunnels.get(peer)
        if tunnel is None or request.asker != tunnel.public_key:
            self._refuse(sock, UNKNOWN, peer, Status.BAD_REQUEST,
                         "the chain does not end with the asking peer's key")
            return
        pipe = self.pipes.get(request.pipe)
        if pipe is None:
            self._refuse(sock, UNKNOWN, peer, Status.UNKNOWN_PIPE,
                         f"asked for pipe {request.pipe}, which this file does not name")
            return
        if not pipe.allows(peer):
            self._refuse(sock, pipe.name, peer, Status.FORBIDDEN,
                         f"pipe {pipe.name}: from: does not name {peer}")
            return
        if self.plan.public_key in request.chain or (
                pipe.peer is not None and len(request.chain) >= MAX_HOPS):
            self._refuse(sock, pipe.name, peer, Status.LOOP,
                         f"pipe {pipe.name}: the chain already passed this gateway "
                         f"or is {MAX_HOPS} gateways long")
            return
        conn.pipe = pipe.name
        self.conns.setdefault(pipe.name, set()).add(conn)
        await self._open(conn, pipe, request)

    def _refuse(self, sock: socket.socket, pipe: str, peer: str, status: Status,
                why: str) -> None:
        self.stats.connections[(pipe, peer, status.label)] += 1
        self._log_once(peer, pipe, f"refused ({status.label}): {why}")
        try:
            sock.send(bytes([status]))
        except OSError:
            pass
        relay.close(self.loop, sock)

    async def _open(self, conn: _Conn, pipe: Pipe, request: Request | None) -> None:
        """Connect onward for `conn`; reply to an asking gateway; join or close."""
        reply = request is not None
        far: socket.socket | None = None
        if pipe.remote is not None:
            status, far = await self._dial_remote(pipe.remote)
        else:
            status, far = await self._dial_peer(pipe)
        if conn.closed:  # the pipe went away, or the client, while dialing
            if far is not None:
                relay.close(self.loop, far, reset=True)
            return
        joint = None
        if far is not None:
            joint = conn.join(far)
            if pipe.peer is not None:
                # Pass on: the request first, the client's bytes right behind it (they
                # wait in the far side's socket until it has dialed); bytes back only
                # after the one-byte reply.
                own = self.plan.public_key or ""
                nxt = request.passed_on(own) if request else Request(pipe.name, (own,))
                try:
                    far.send(nxt.encode())
                except OSError:
                    status = Status.UNREACHABLE
                else:
                    joint.start_up()
                    status = await self._read_status(conn, far)
                    if conn.closed:
                        return
        self.stats.connections[(pipe.name, conn.asker, status.label)] += 1
        if status is not Status.OK:
            self._log_once(conn.asker, pipe.name, f"failed ({status.label}) toward "
                                                  f"{pipe.target}")
            if reply:
                try:
                    conn.near.send(bytes([status]))
                except OSError:
                    pass
            # A local client sees a reset, as if the far end itself had refused it;
            # a gateway gets its reply byte first (a reset would discard it).
            conn.close(reset=True, near_reset=not reply)
            return
        conn.established = True
        self.stats.active[pipe.name] += 1
        assert joint is not None
        if reply:
            # OK goes out in the same segment as the first bytes back (one packet and
            # one wakeup less for the asking gateway), or alone after OK_DELAY.
            joint.down.prefix = bytes([Status.OK])
            self.loop.call_later(OK_DELAY, joint.down.flush_prefix)
        if pipe.remote is not None:
            joint.start_up()
        joint.start_down()

    async def _read_status(self, conn: _Conn, far: socket.socket) -> Status:
        fut = self.loop.create_future()
        conn.waiter = fut
        fd = far.fileno()
        self.loop.add_reader(fd, lambda: fut.done() or fut.set_result(True))
        try:
            readable = await asyncio.wait_for(fut, REPLY_TIMEOUT)
        except TimeoutError:
            return Status.UNREACHABLE
        finally:
            conn.waiter = None
            if far.fileno() >= 0:
                self.loop.remove_reader(fd)
        if not readable:
            return Status.FAILED
        try:
            byte = far.recv(1)
        except OSError:
            return Status.FAILED
        return Status.from_byte(byte[0]) if byte else Status.FAILED

    async def _dial_remote(self, remote: HostPort) -> tuple[Status, socket.socket | None]:
        try:
            ip = ipaddress.ip_address(remote.host)
            targets = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                        (str(ip), remote.port))]
        except ValueError:
            try:
                infos = await asyncio.wait_for(self.loop.getaddrinfo(
                    remote.host, remote.port, type=socket.SOCK_STREAM,
                    proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT)
            except (OSError, TimeoutError):
                return Status.UNRESOLVED, None
            targets = [(family, addr) for family, _t, _p, _c, addr in infos]
        status = Status.UNREACHABLE
        for family, addr in targets:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                relay.tune(sock)
                await self._connect(sock, addr)
            except ConnectionRefusedError:
                status = Status.REFUSED
            except (OSError, TimeoutError):
                pass
            else:
                return Status.OK, sock
            relay.close(self.loop, sock)
        return status, None

    async def _dial_peer(self, pipe: Pipe) -> tuple[Status, socket.socket | None]:
        tunnel = self.tunnels.get(pipe.peer or "")
        own = self.plan.address
        ifindex = self.ifindex.get(tunnel.device) if tunnel else None
        if tunnel is None or own is None or ifindex is None:
            return Status.FAILED, None
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            relay.tune(sock)
            # From our own pipe address: the far side knows us by it.
            sock.bind((str(own), 0, 0, ifindex))
            await self._connect(sock, (str(tunnel.address), PIPE_PORT, 0, ifindex))
        except (OSError, TimeoutError):
            relay.close(self.loop, sock)
            return Status.UNREACHABLE, None
        return Status.OK, sock

    async def _connect(self, sock: socket.socket, addr: tuple) -> None:
        try:
            sock.connect(addr)
            return
        except BlockingIOError:
            pass
        await self._ready(sock, "w", CONNECT_TIMEOUT)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise (ConnectionRefusedError if err == 111 else OSError)(err, os.strerror(err))

    async def _ready(self, sock: socket.socket, kind: str, timeout: float) -> None:
        """Wait until `sock` is readable ("r") or writable ("w"); TimeoutError after timeout."""
        fut = self.loop.create_future()
        fd = sock.fileno()
        add, remove = ((self.loop.add_reader, self.loop.remove_reader) if kind == "r"
                       else (self.loop.add_writer, self.loop.remove_writer))
        add(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if sock.fileno() >= 0:
                remove(fd)

    async def _read_exact(self, sock: socket.socket, n: int) -> bytes:
        """Exactly n bytes (never more: what follows belongs to the relayed stream)."""
        deadline = self.loop.time() + REQUEST_TIMEOUT
        data = b""
        while len(data) < n:
            try:
                chunk = sock.recv(n - len(data))
            except BlockingIOError:
                await self._ready(sock, "r", max(0.0, deadline - self.loop.time()))
                continue
            if not chunk:
                raise EOFError
            data += chunk
        return data

    # -- logging and publishing -------------------------------------------------------------

    def _log_once(self, peer: str, pipe: str, what: str) -> None:
        key = (peer, pipe, what)
        if key in self._logged:
            return
        if len(self._logged) < LOGGED_MAX:
            self._logged.add(key)
        log.warning("pipe %s from %s: %s (logged once)", pipe, peer, what)

    def _snapshot(self) -> dict:
        pipes = []
        for p in self.plan.pipes:
            tunnel = self.tunnels.get(p.peer) if p.peer else None
            via = (f"[{tunnel.address}%{tunnel.device}]:{PIPE_PORT}" if tunnel else None)
            conns: Counter = Counter()
            for (name, _peer, result), n in self.stats.connections.items():
                if name == p.name:
                    conns[result] += n
            pipes.append({
                "name": p.name,
                "listen": str(p.bind) if p.bind else None,
                "to": p.target,
                "peer": p.peer,
                "remote": str(p.remote) if p.remote else None,
                "via": via,
                "from": p.from_,
                "active": self.stats.active[p.name],
                "connections": dict(sorted(conns.items())),
                "bytes": {d: self.stats.bytes[(p.name, d)]
                          for d in (relay.UPSTREAM, relay.DOWNSTREAM)},
                "error": self.listen_errors.get(p.name),
            })
        return {
            "gateway": self.plan.gateway,
            "pid": os.getpid(),
            "config": self.plan.config,
            "netns": self.netns,
            "address": str(self.plan.address) if self.plan.address and self.plan.tunnels
            else None,
            "pipe_port": PIPE_PORT,
            "reloads": self.reloads,
            "reload_error": self.reload_error,
            "pipes": pipes,
            "tunnels": [{"peer": t.peer, "device": t.device, "address": str(t.address),
                         "listening": t.device in self.tunnel_listeners}
                        for t in self.plan.tunnels],
        }

    def _publish_now(self) -> None:
        if self.publish is None or not self.plan.gateway:
            return
        snap = self._snapshot()
        if snap != self._published:
            try:
                self.publish(snap)
            except OSError as e:
                self._log_once("publish", "", _strerror(e))
            self._published = snap

    def _publish_tick(self) -> None:
        self._publish_now()
        self.loop.call_later(1.0, self._publish_tick)


def _listening_socket(bind: HostPort) -> socket.socket:
    if bind.host == "::":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr: tuple = ("::", bind.port)
        except OSError:  # IPv6 off: every IPv4 address
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            addr = ("0.0.0.0", bind.port)
    else:
        family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        addr = (bind.host, bind.port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        relay.tune(sock)  # accepted sockets inherit these options
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _tunnel_socket(address: IPv6Address, device: str, ifindex: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound to the device as well as to its link-local address: only what the
        # tunnel delivers reaches this socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        relay.tune(sock)  # accepted sockets inherit these options
        # A gateway always speaks first (its request): accept when it has, one wakeup less.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(REQUEST_TIMEOUT))
        sock.bind((str(address), PIPE_PORT, 0, ifindex))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _strerror(e: BaseException) -> str:
    return (e.strerror or str(e)).lower() if isinstance(e, OSError) else str(e)


def _raise_fd_limit() -> None:
    # Each relayed connection holds two sockets and two pipes (six fds).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

