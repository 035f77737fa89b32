"""XDP on a device (fastpath: xdp): natgw's program in native mode, and what the device can do.

Attached with netlink (IFLA_XDP): the attachment belongs to the device, not to a
process or a link fd, so it outlives `natgw up --detach` and only `natgw down`
(detach_xdp) removes it. Native mode only: generic XDP runs after the skb is
built and costs more than the tc fast path it would replace, so a driver without
native XDP is refused in one line instead of silently running slower. A program
natgw did not attach (another name than natgw_xdp) is never replaced.

Callers hold an IPRoute socket in the device's netns; the queries that have no
socket of their own (netdev genetlink, ethtool ioctl) run in it with in_netns.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING

from ..netns import NETNS_DIR, in_netns
from .bpfsys import BpfError, prog_fd_by_id, prog_id, prog_name
from .loader import DataplaneError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
PROG_NAME = "natgw_xdp"
_MODES = {"xdp": XDP_ATTACHED_DRV, "xdpgeneric": 2, "xdpoffload": 3, "xdpmulti": 4}

# enum netdev_xdp_act (uapi/linux/netdev.h): what a device's driver does with XDP.
XDP_ACT_BASIC = 1 << 0  # runs XDP programs natively
XDP_ACT_NDO_XMIT = 1 << 2  # transmits redirected frames (a veth: its peer has NAPI)
NETDEV_CMD_DEV_GET = 1

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16


def _netdev_msg():
    from pyroute2.netlink import genlmsg  # noqa: PLC0415

    class netdevmsg(genlmsg):
        nla_map = (("NETDEV_A_DEV_UNSPEC", "none"),
                   ("NETDEV_A_DEV_IFINDEX", "uint32"),
                   ("NETDEV_A_DEV_PAD", "none"),
                   ("NETDEV_A_DEV_XDP_FEATURES", "uint64"))

    return netdevmsg


def xdp_features(netns: str | None, ifindex: int) -> int:
    """The device's XDP_ACT_* flags, from the netdev genetlink family (Linux 6.3+)."""
    from pyroute2.netlink import NLM_F_REQUEST  # noqa: PLC0415
    from pyroute2.netlink.generic import GenericNetlinkSocket  # noqa: PLC0415

    msg_class = _netdev_msg()

    def query() -> int:
        sock = GenericNetlinkSocket()
        try:
            sock.bind("netdev", msg_class)
            msg = msg_class()
            msg["cmd"] = NETDEV_CMD_DEV_GET
            msg["version"] = 1
            msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
            reply = sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST)
            return int(reply[0].get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0)
        finally:
            sock.close()

    try:
        return in_netns(netns, query)
    except Exception as e:  # pyroute2 raises NetlinkError or its own errors
        raise DataplaneError(f"ifindex {ifindex}: reading its XDP features failed: {e}") from e


def attached(ipr: IPRoute, ifindex: int) -> tuple[int, int]:
    """(XDP_ATTACHED_* mode, program id) of a device's XDP program; (0, 0) if none."""
    return link_xdp(ipr.get_links(ifindex)[0])


def link_xdp(link) -> tuple[int, int]:
    """attached(), from a link message already read."""
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return XDP_ATTACHED_NONE, 0
    mode = xdp.get_attr("IFLA_XDP_ATTACHED")  # pyroute2 decodes it to a name (None: none)
    mode = _MODES.get(mode, -1) if isinstance(mode, str) else int(mode or 0)
    return mode, int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0)


def program_name(pid: int) -> str:
    """The name of a loaded program by id, "" if it is gone."""
    try:
        fd = prog_fd_by_id(pid)
    except BpfError:
        return ""
    try:
        return prog_name(fd)
    finally:
        os.close(fd)


def attach_xdp(ipr: IPRoute, netns: str | None, ifindex: int, ifname: str, fd: int) -> None:
    """Run program `fd` at the device's native XDP hook (idempotent).

    natgw's own program (another build) is replaced atomically; anything else
    attached, or a driver without native XDP, is refused with a DataplaneError.
    """
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    if not xdp_features(netns, ifindex) & XDP_ACT_BASIC:
        raise DataplaneError(f"device {ifname}: its driver has no native XDP; "
                             "fastpath: xdp needs it (fastpath: tc works on every device)")
    mode, current = attached(ipr, ifindex)
    if current == prog_id(fd):
        return
    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd)]
    old = -1
    if current:
        if mode != XDP_ATTACHED_DRV or program_name(current) != PROG_NAME:
            raise DataplaneError(f"device {ifname}: runs another XDP program (id {current}); "
                                 "natgw does not replace it")
        old = prog_fd_by_id(current)
        attrs += [("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE),
                  ("IFLA_XDP_EXPECTED_FD", old)]
    else:
        attrs.append(("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST))
    try:
        ipr.link("set", index=ifindex, xdp={"attrs": attrs})
    except NetlinkError as e:
        if e.code == errno.EOPNOTSUPP:
            raise DataplaneError(f"device {ifname}: its driver has no native XDP; fastpath: "
                                 "xdp needs it (fastpath: tc works on every device)") from e
        if e.code in (errno.EBUSY, errno.EEXIST):
            raise DataplaneError(f"device {ifname}: runs another XDP program; "
                                 "natgw does not replace it") from e
        raise DataplaneError(f"device {ifname}: attaching XDP failed: {e}") from e
    finally:
        if old >= 0:
            os.close(old)


def detach_xdp(ipr: IPRoute, ifindex: int) -> bool:
    """Remove natgw's XDP program from a device; anything else stays. True if removed."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    mode, current = attached(ipr, ifindex)
    if mode != XDP_ATTACHED_DRV or program_name(current) != PROG_NAME:
        return False
    try:
        old = prog_fd_by_id(current)
    except BpfError:
        return False
    try:
        # REPLACE with the expected program: one attached meanwhile by someone else stays.
        ipr.link("set", index=ifindex, xdp={"attrs": [
            ("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE),
            ("IFLA_XDP_EXPECTED_FD", old)]})
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.EEXIST, errno.EBUSY):
            raise
        return False
    finally:
        os.close(old)
    return True


def tx_csum_on(netns: str | None, ifname: str) -> bool:
    """Whether a device offloads its tx checksums (ethtool -k: tx-checksumming)."""
    def query() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GTXCSUM, 0))
            ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
            return struct.unpack("II", value.raw[:8])[1] != 0
    return in_netns(netns, query)


def veth_peer(ipr: IPRoute, netns: str | None, ifindex: int) -> tuple[str | None, str] | None:
    """(netns, name) of a veth's peer, None if the device is no veth or its peer's netns
    is not a named one natgw can enter."""
    link = ipr.get_links(ifindex)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
        return None
    peer_index = link.get_attr("IFLA_LINK")
    nsid = link.get_attr("IFLA_LINK_NETNSID")
    peer_ns = netns
    if nsid is not None:
        peer_ns = None
        for entry in sorted(NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []:
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                found = ipr.get_netnsid(fd=fd).get("nsid")
            except Exception:  # noqa: BLE001 - an unreadable netns is not the peer's
                found = None
            finally:
                os.close(fd)
            if found == nsid:
                peer_ns = entry.name
                break
        else:
            return None
    names = dict(in_netns(peer_ns, lambda: socket.if_nameindex()))
    name = names.get(peer_index)
    return (peer_ns, name) if name else None
