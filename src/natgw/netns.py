"""Named network namespaces, used without leaving natgw's own namespaces.

natgw works on netns created by `ip netns add` (bind mounts under /var/run/netns).
Netlink sockets are opened *inside* a netns (pyroute2 forks a helper that calls
setns and hands the fd back), so the natgw process itself never switches netns
and keeps its mount namespace. `netns=None` everywhere means natgw's own netns.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

# pyroute2 is imported by the functions that open netlink sockets: importing
# it costs more than a read-only command may take (`natgw maps`, `status`).
if TYPE_CHECKING:
    from pyroute2 import IPRoute

NETNS_DIR = Path("/var/run/netns")
T = TypeVar("T")

# Identity of a network namespace: (device, inode) of its nsfs file.
NetnsId = tuple[int, int]


class NetnsNotFound(LookupError):
    """The named network namespace does not exist."""


def _check_name(name: str) -> None:
    # Names are path components under NETNS_DIR; refuse anything that could escape it.
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid netns name {name!r}")


def netns_path(name: str) -> Path:
    """Path of the bind mount that keeps netns `name` alive."""
    _check_name(name)
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    """True when `ip netns add name` (or equivalent) created this netns."""
    try:
        return os.path.ismount(netns_path(name))
    except ValueError:
        return False


def require_netns(name: str | None) -> None:
    """Raise NetnsNotFound unless `name` is None (own netns) or an existing netns."""
    if name is not None and not netns_exists(name):
        raise NetnsNotFound(f"netns {name}: does not exist")


def netns_id(name: str | None) -> NetnsId:
    """Identity of netns `name` (None: the calling process's own netns)."""
    path = "/proc/self/ns/net" if name is None else str(netns_path(name))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NetnsNotFound(f"netns {name}: does not exist") from None
    return (st.st_dev, st.st_ino)


def named_netns_ids() -> set[NetnsId]:
    """Identities of every named netns and of the calling process's own netns."""
    ids = {netns_id(None)}
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            try:
                st = os.stat(entry)
            except OSError:
                continue
            ids.add((st.st_dev, st.st_ino))
    return ids


def pid_netns_id(pid: int) -> NetnsId | None:
    """Identity of the netns process `pid` lives in, or None if it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (st.st_dev, st.st_ino)


def exec_argv(name: str | None, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside netns `name`.

    `ip netns exec` execs the command in place, so the child's PID is the
    command's PID (it also gives the child a private mount ns with /sys remounted).
    """
    if name is None:
        return list(argv)
    _check_name(name)
    return ["ip", "netns", "exec", name, *argv]


def iproute(name: str | None) -> IPRoute:
    """An IPRoute socket in netns `name`; never creates a missing netns."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    require_netns(name)
    if name is None:
        return IPRoute()
    # flags=0: pyroute2's default O_CREAT would silently create a missing netns.
    return IPRoute(netns=name, flags=0)


def netns_socket(name: str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """A socket created inside netns `name` (e.g. a raw ICMP socket for tests)."""
    from pyroute2 import netns as _pyroute2_netns  # noqa: PLC0415

    require_netns(name)
    if name is None:
        return socket.socket(family, type, proto)
    return _pyroute2_netns.create_socket(
        netns=name, family=family, socket_type=type, proto=proto, flags=0
    )


CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C  # ioctl: an fd of a socket's network namespace


def link_names(name: str | None) -> dict[int, str]:
    """ifindex -> device name in netns `name`, without pyroute2 (if_nameindex(3)).

    Raises OSError or NetnsNotFound.
    """
    return in_netns(name, lambda: dict(socket.if_nameindex()))


def in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """fn() run inside netns `name` (None: here), for calls that take an ifindex
    (bpf(2) on tcx, devmap entries) or create sockets there.

    setns(2) into a network namespace changes only the calling thread, so a
    short-lived thread enters the netns, calls fn and ends; the process stays
    where it is. Raises fn's exception, OSError or NetnsNotFound.
    """
    if name is None:
        return fn()
    path = netns_path(name)

    def open_ns() -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsNotFound(f"netns {name}: does not exist") from None

    return _run_in_fd(open_ns, fn, name)


def run_in_netns_of(sock: int, fn: Callable[[], T]) -> T:
    """fn() run inside the netns of a socket (e.g. an IPRoute's: where its ifindexes are)."""
    import fcntl  # noqa: PLC0415

    fd = fcntl.ioctl(sock, SIOCGSKNS)
    if os.fstat(fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        os.close(fd)
        return fn()  # already there: no thread
    return _run_in_fd(lambda: fd, fn, f"of socket {sock}")


def enter_netns(name: str | None) -> None:
    """Move the calling thread (only it) into netns `name` (None: stay), for good:
    for a worker thread that makes its sockets there."""
    if name is None:
        return
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, name)
    finally:
        os.close(fd)


def _setns(fd: int, what: str) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what}: {os.strerror(err)}")


def _run_in_fd(open_ns: Callable[[], int], fn: Callable[[], T], what: str) -> T:
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = open_ns()
        except (OSError, NetnsNotFound) as e:
            error.append(e)
            return
        try:
            _setns(fd, what)
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name="natgw-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
