"""Client for the cross-platform WireGuard UAPI that wireguard-go serves.

Protocol (https://www.wireguard.com/xplatform/): the client sends `get=1` or
`set=1` followed by key=value lines and a blank line; the server answers with
key=value lines ending in `errno=N` and a blank line. Keys are hex. One request
per connection keeps the client stateless.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path

from natgw.wireguard.model import DeviceState, PeerStatus, WireGuardError
from natgw.wireguard.plan import Plan

# Fixed in wireguard-go and shared by every netns on the host.
SOCKET_DIR = Path("/var/run/wireguard")
_MAX_REPLY = 16 << 20


def socket_path(ifname: str, socket_dir: Path = SOCKET_DIR) -> Path:
    """Where wireguard-go serves the UAPI for device `ifname`."""
    return socket_dir / f"{ifname}.sock"


def _errno_text(value: str) -> str:
    # wireguard-go answers negative errnos (errno=-22); the protocol says errno values.
    code = abs(int(value))
    return f"errno {code} ({os.strerror(code)})"


class _PeerBuilder:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.endpoint: str | None = None
        self.allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.handshake = 0
        self.rx = 0
        self.tx = 0
        self.keepalive: int | None = None

    def apply(self, key: str, value: str) -> None:
        match key:
            case "endpoint":
                self.endpoint = value
            case "allowed_ip":
                self.allowed_ips.append(ipaddress.ip_network(value, strict=False))
            case "last_handshake_time_sec":
                self.handshake = int(value)
            case "rx_bytes":
                self.rx = int(value)
            case "tx_bytes":
                self.tx = int(value)
            case "persistent_keepalive_interval":
                self.keepalive = int(value) or None

    def build(self) -> PeerStatus:
        return PeerStatus(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips),
            latest_handshake=self.handshake,
            rx_bytes=self.rx,
            tx_bytes=self.tx,
            persistent_keepalive=self.keepalive,
        )


_PEER_FIELDS = frozenset(
    {
        "endpoint",
        "allowed_ip",
        "last_handshake_time_sec",
        "rx_bytes",
        "tx_bytes",
        "persistent_keepalive_interval",
    }
)


def parse_get(reply: str) -> DeviceState:
    """Parse a `get=1` reply. Unknown keys are skipped for forward compatibility."""
    private_key: bytes | None = None
    listen_port = 0
    peers: list[_PeerBuilder] = []
    errno: str | None = None
    for line in reply.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise WireGuardError(f"malformed UAPI reply line {key[:40]!r}")
        try:
            if key == "errno":
                errno = value
                int(value)
            elif key == "private_key":
                private_key = bytes.fromhex(value)
            elif key == "listen_port":
                listen_port = int(value)
            elif key == "public_key":
                peers.append(_PeerBuilder(bytes.fromhex(value)))
            elif key in _PEER_FIELDS:
                if not peers:
                    raise WireGuardError(f"malformed UAPI reply: {key} before any peer")
                peers[-1].apply(key, value)
        except ValueError:
            # Never echo the value: it may be a private key.
            raise WireGuardError(f"malformed UAPI reply: bad value for {key}") from None
    if errno is None:
        raise WireGuardError("malformed UAPI reply: no errno line")
    if int(errno) != 0:
        raise WireGuardError(f"get failed: {_errno_text(errno)}")
    return DeviceState(
        private_key=private_key, listen_port=listen_port, peers=tuple(p.build() for p in peers)
    )


def render_set(plan: Plan) -> str:
    """The `set=1` request that applies `plan` (contains the private key if it changes)."""
    lines = ["set=1"]
    if plan.private_key is not None:
        lines.append(f"private_key={plan.private_key.hex()}")
    if plan.listen_port is not None:
        lines.append(f"listen_port={plan.listen_port}")
    for key in plan.remove:
        lines += [f"public_key={key.hex()}", "remove=true"]
    for peer in plan.upsert:
        lines.append(f"public_key={peer.public_key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive or 0}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={net}" for net in peer.allowed_ips]
    return "\n".join(lines) + "\n\n"


class UapiClient:
    """Talks to the wireguard-go serving device `ifname`."""

    def __init__(self, ifname: str, socket_dir: Path = SOCKET_DIR, timeout: float = 2.0) -> None:
        self.ifname = ifname
        self.path = socket_path(ifname, socket_dir)
        self.timeout = timeout

    def _fail(self, what: str) -> WireGuardError:
        return WireGuardError(f"wireguard-go {self.ifname}: {what}")

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except BaseException:
            sock.close()
            raise
        return sock

    def server_pid(self) -> int | None:
        """PID of the process serving the socket; None if it is missing or stale."""
        try:
            sock = self._connect()
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as exc:
            raise self._fail(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        with sock:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid

    def _exchange(self, request: str) -> str:
        try:
            sock = self._connect()
        except FileNotFoundError:
            raise self._fail(f"no UAPI socket {self.path} (device not running)") from None
        except ConnectionRefusedError:
            raise self._fail(f"UAPI socket {self.path} is stale (no process)") from None
        except OSError as exc:
            raise self._fail(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        buf = bytearray()
        with sock:
            try:
                sock.sendall(request.encode())
                # Every reply line is non-empty, so a blank line can only end the reply.
                while not buf.endswith(b"\n\n") and len(buf) < _MAX_REPLY:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise self._fail("UAPI connection closed before the reply ended")
                    buf += chunk
            except TimeoutError:
                raise self._fail(f"no UAPI reply within {self.timeout:g}s") from None
            except OSError as exc:
                raise self._fail(f"UAPI exchange failed: {exc.strerror or exc}") from None
        if not buf.endswith(b"\n\n"):
            raise self._fail("UAPI reply too long")
        return buf.decode("utf-8", errors="replace")

    def get(self) -> DeviceState:
        """Read the device's keys, port, peers and counters."""
        reply = self._exchange("get=1\n\n")
        try:
            return parse_get(reply)
        except WireGuardError as exc:
            raise self._fail(str(exc)) from None

    def set(self, plan: Plan) -> None:
        """Apply `plan`; an `errno=N` reply other than 0 raises WireGuardError."""
        if plan.is_empty():
            return
        reply = self._exchange(render_set(plan))
        errnos = [line[6:] for line in reply.splitlines() if line.startswith("errno=")]
        errno = errnos[-1] if errnos else None
        if errno is None or not errno.lstrip("-").isdigit():
            raise self._fail("malformed UAPI reply to set: no errno line")
        if int(errno) != 0:
            raise self._fail(f"set failed: {_errno_text(errno)}")
