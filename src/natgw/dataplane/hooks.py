"""Where natgw's programs run on a device: one primitive per hook, two mechanisms.

- tcx (kernel >= 6.6): a BPF link per hook (BPF_LINK_CREATE, BPF_TCX_INGRESS /
  BPF_TCX_EGRESS), appended after the tcx programs already there. A link lives
  as long as something holds it: natgw pins it in the gateway's pin directory as
  `link_<direction>_<device>`, so it outlives `natgw up --detach`. A new program
  replaces the old one atomically (BPF_LINK_UPDATE on the link).
- clsact + cls_bpf (older kernels): a direct-action filter with natgw's fixed
  priority and handle on each clsact hook, replaced atomically in place.

`mechanism()` chooses: tcx where the kernel has it (probed once), unless
NATGW_ATTACH=tc asks for the filters. Moving a device from one mechanism to the
other attaches the new one first and only then removes the old one, so that
no packet passes untranslated (for that instant both run: tcx programs run
before clsact filters, and natgw's verdict, TC_ACT_UNSPEC == TCX_NEXT, lets
later programs and filters run). natgw's programs are known by their name
(PROG_PREFIX); other programs and filters on a device are never touched.

The ifindexes of an IPRoute are those of its netns: bpf(2) calls that take one
run in that netns (natgw.netns.run_in_netns_of).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from ..netns import run_in_netns_of
from .bpfsys import (
    BPF_TCX_EGRESS,
    BPF_TCX_INGRESS,
    BpfError,
    link_detach,
    link_fd_by_id,
    link_info,
    link_update,
    obj_get,
    obj_pin,
    prog_fd_by_id,
    prog_info,
    tcx_link_create,
    tcx_query,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute

TCX, TC = "tcx", "tc"
MECHANISM_ENV = "NATGW_ATTACH"  # "tc": clsact + cls_bpf even where tcx works
PROG_PREFIX = "natgw_"  # the name of every natgw program (bpf/natgw.c's entry functions)
LINK_PREFIX = "link_"
TCX_TYPES = {"egress": BPF_TCX_EGRESS, "ingress": BPF_TCX_INGRESS}

# tc clsact hook points and the filter natgw owns on each.
PARENTS = {"egress": 0xFFFFFFF3, "ingress": 0xFFFFFFF2}
FILTER_PRIO = 0x4E47  # "NG": a fixed priority and handle make replace atomic
FILTER_HANDLE = 0x4E47
ETH_P_ALL = 0x0003


class HookError(Exception):
    """Attaching or detaching failed; one-line message."""


@dataclass(frozen=True)
class Attached:
    """natgw's program on one hook of a device."""

    name: str  # the program's name, e.g. "natgw_egress"
    prog_id: int
    mechanism: str  # TCX or TC
    link_id: int = 0  # tcx
    filter_name: str = ""  # tc: natgw_<program>:<build>:<program id>


@cache
def tcx_available() -> bool:
    """Whether this kernel has tcx hooks (a query on lo; EINVAL before 6.6)."""
    try:
        tcx_query(1, BPF_TCX_INGRESS)
    except BpfError:
        return False
    return True


def mechanism() -> str:
    if os.environ.get(MECHANISM_ENV, "").strip().lower() == TC:
        return TC
    return TCX if tcx_available() else TC


def link_pin_name(direction: str, ifname: str) -> str:
    return f"{LINK_PREFIX}{direction}_{ifname}"


def filter_name(pin: str, prog_fd: int) -> str:
    """The cls_bpf filter's name: program and build (from its pin prog_<program>_<build>)
    and program id, so that the filter alone says what to pin again (pyroute2 does not
    decode TCA_BPF_ID)."""
    program, _, build = os.path.basename(pin).removeprefix("prog_").rpartition("_")
    return f"{PROG_PREFIX}{program}:{build}:{prog_info(prog_fd).id}"


# -- reading -------------------------------------------------------------------


def _tcx_ours(ifindex: int, direction: str) -> list[tuple[int, int, str]]:
    """(link id, program id, name) of natgw's tcx links on a hook, in the caller's netns."""
    out = []
    for entry in tcx_query(ifindex, TCX_TYPES[direction]):
        try:
            fd = prog_fd_by_id(entry.prog_id)
        except BpfError:
            continue  # replaced meanwhile
        try:
            name = prog_info(fd).name
        finally:
            os.close(fd)
        if name.startswith(PROG_PREFIX) and entry.link_id:
            out.append((entry.link_id, entry.prog_id, name))
    return out


def _filters(ipr: IPRoute, ifindex: int, parent: int) -> dict[int, tuple[str, int]]:
    """prio -> (cls_bpf filter name, program id) of the filters on a clsact hook."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    out = {}
    try:
        for msg in ipr.get_filters(index=ifindex, parent=parent):
            opts = msg.get_attr("TCA_OPTIONS")
            if msg.get_attr("TCA_KIND") == "bpf" and opts is not None:
                name = opts.get_attr("TCA_BPF_NAME") or ""
                tail = name.rpartition(":")[2]
                out[msg["info"] >> 16] = (name, int(tail) if name.count(":") == 2
                                          and tail.isdigit() else 0)
    except NetlinkError as e:
        if e.code not in (errno.EINVAL, errno.ENOENT):
            raise
    return out


def _our_filter(ipr: IPRoute, ifindex: int, direction: str) -> tuple[str, int] | None:
    name, pid = _filters(ipr, ifindex, PARENTS[direction]).get(FILTER_PRIO, ("", 0))
    return (name, pid) if name.startswith(PROG_PREFIX) else None


def attached(ipr: IPRoute, ifindex: int) -> dict[str, Attached]:
    """direction -> natgw's program on that hook of a device (tcx first, then tc)."""
    out: dict[str, Attached] = {}
    if tcx_available():
        def query() -> dict[str, list[tuple[int, int, str]]]:
            return {d: _tcx_ours(ifindex, d) for d in TCX_TYPES}

        for direction, ours in run_in_netns_of(ipr.fileno(), query).items():
            if ours:
                link_id, pid, name = ours[0]
                out[direction] = Attached(name, pid, TCX, link_id=link_id)
    for direction in PARENTS:
        if direction in out:
            continue
        found = _our_filter(ipr, ifindex, direction)
        if found is not None:
            fname, pid = found
            out[direction] = Attached(fname.partition(":")[0], pid, TC, filter_name=fname)
    return out


def has_clsact(ipr: IPRoute, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


# -- one hook --------------------------------------------------------------------


def attach_hook(ipr: IPRoute, ifindex: int, direction: str, prog_fd: int, pin: str) -> bool:
    """Run a program on one hook of a device (idempotent; atomic where one replaces another).

    pin: the program's pin, prog_<program>_<build> in the gateway's pin directory,
    where the tcx link is pinned too. Return: True if natgw created a clsact qdisc.
    """
    if mechanism() == TCX:
        _attach_tcx(ipr, ifindex, direction, prog_fd, os.path.dirname(pin))
        _del_filter(ipr, ifindex, direction)  # only now: the tcx link runs first
        return False
    created = _ensure_clsact(ipr, ifindex)
    name = filter_name(pin, prog_fd)
    if _our_filter(ipr, ifindex, direction) != (name, prog_info(prog_fd).id):
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        try:
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=prog_fd, name=name,
                   parent=PARENTS[direction], classid=1, direct_action=True,
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as e:
            raise HookError(f"ifindex {ifindex}: attaching {direction} failed: {e}") from e
    if tcx_available():
        _detach_tcx(ipr, ifindex, direction)  # only now: the filter runs
    return created


def detach_hook(ipr: IPRoute, ifindex: int, direction: str) -> None:
    """Take natgw's program off one hook of a device, by either mechanism (idempotent)."""
    if tcx_available():
        _detach_tcx(ipr, ifindex, direction)
    _del_filter(ipr, ifindex, direction)


def _attach_tcx(ipr: IPRoute, ifindex: int, direction: str, prog_fd: int, pdir: str) -> None:
    ifname = ipr.get_links(ifindex)[0].get_attr("IFLA_IFNAME")
    path = os.path.join(pdir, link_pin_name(direction, ifname))
    want = prog_info(prog_fd).id

    def attach() -> None:
        ours = _tcx_ours(ifindex, direction)
        for link_id, _, _ in ours[1:]:  # one natgw program per hook
            _detach_link_id(link_id)
        if not ours:
            fd = tcx_link_create(prog_fd, ifindex, TCX_TYPES[direction])
        else:
            link_id, pid, _ = ours[0]
            fd = link_fd_by_id(link_id)
            if pid != want:
                old = prog_fd_by_id(pid)
                try:
                    link_update(fd, prog_fd, old)  # atomic: no packet sees neither
                finally:
                    os.close(old)
        try:
            _pin_link(fd, path)
        finally:
            os.close(fd)

    try:
        run_in_netns_of(ipr.fileno(), attach)
    except BpfError as e:
        raise HookError(f"ifindex {ifindex}: attaching {direction} failed: {e}") from e


def _pin_link(fd: int, path: str) -> None:
    """Pin a link at path, in place of a pin of another (e.g. detached) link."""
    if os.path.exists(path):
        old = obj_get(path)
        try:
            if link_info(old).id == link_info(fd).id:
                return
        finally:
            os.close(old)
        os.unlink(path)
    obj_pin(fd, path)


def _detach_link_id(link_id: int) -> None:
    try:
        fd = link_fd_by_id(link_id)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return
        raise
    try:
        link_detach(fd)
    finally:
        os.close(fd)


def _detach_tcx(ipr: IPRoute, ifindex: int, direction: str) -> None:
    def detach() -> None:
        for link_id, _, _ in _tcx_ours(ifindex, direction):
            _detach_link_id(link_id)

    try:
        run_in_netns_of(ipr.fileno(), detach)
    except BpfError as e:
        if e.errno != errno.ENODEV:
            raise HookError(f"ifindex {ifindex}: detaching {direction} failed: {e}") from e


def _ensure_clsact(ipr: IPRoute, ifindex: int) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise HookError(f"ifindex {ifindex}: adding clsact failed: {e}") from e
        return False
    return True


def _del_filter(ipr: IPRoute, ifindex: int, direction: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    if _our_filter(ipr, ifindex, direction) is None:
        return
    try:
        ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=PARENTS[direction],
               prio=FILTER_PRIO, protocol=ETH_P_ALL)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def remove_clsact_if_empty(ipr: IPRoute, ifindex: int) -> bool:
    """Delete a device's clsact qdisc if no filter is left on it. True: there is none now."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    if not has_clsact(ipr, ifindex):
        return True
    if any(_filters(ipr, ifindex, p) for p in PARENTS.values()):
        return False
    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise
    return True


# -- pinned links ----------------------------------------------------------------


def link_pins(pdir: str) -> list[str]:
    try:
        return sorted(os.path.join(pdir, n) for n in os.listdir(pdir)
                      if n.startswith(LINK_PREFIX))
    except FileNotFoundError:
        return []


def _pinned_links(pdir: str) -> Iterator[tuple[str, int]]:
    """(pin path, fd) of each link pinned in a gateway's pin directory (fd closed after)."""
    for path in link_pins(pdir):
        try:
            fd = obj_get(path)
        except BpfError:
            continue
        try:
            yield path, fd
        finally:
            os.close(fd)


def detach_pinned_links(pdir: str) -> None:
    """Detach every link pinned in a gateway's pin directory, whatever device it is on
    (recorded or not) and whoever else holds it; the pins stay for the caller to remove."""
    for _, fd in _pinned_links(pdir):
        try:
            link_detach(fd)
        except BpfError as e:
            if e.errno not in (errno.ENOLINK, errno.ENOENT, errno.EINVAL):
                raise


def prune_link_pins(pdir: str) -> None:
    """Unpin links that no longer run anywhere (detached, or their device went)."""
    gone = [path for path, fd in _pinned_links(pdir) if link_info(fd).ifindex == 0]
    for path in gone:
        os.unlink(path)


class LinkHolder:
    """Holds fds of a gateway's pinned links (the foreground `up`), so that removing
    their pins detaches nothing: drift repair pins them again from the kernel."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # link id -> fd

    def refresh(self, pdir: str) -> None:
        """Hold every link pinned now; let go of those that no longer run."""
        for path in link_pins(pdir):
            try:
                fd = obj_get(path)
                lid = link_info(fd).id
            except BpfError:
                continue
            if lid in self._fds:
                os.close(fd)
            else:
                self._fds[lid] = fd
        for lid, fd in list(self._fds.items()):
            if link_info(fd).ifindex == 0:
                os.close(fd)
                del self._fds[lid]

    def held(self) -> set[int]:
        return set(self._fds)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
