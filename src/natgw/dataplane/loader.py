"""Compile the dataplane with bcc, pin it, and attach it to devices with tc.

Programs and maps are pinned under /sys/fs/bpf/natgw/<gateway>/. Program pins
carry a hash of their source, so a second `natgw up` reuses what is loaded
(no compile, no re-attach) and a new natgw version replaces the filters
atomically while the maps, and the mappings in them, stay.

The C source is the checkout's top-level bpf/, shipped in the wheel as the
package data natgw/bpf (see pyproject.toml).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..netns import iproute
from . import layout as L
from .bpfsys import (
    BpfError,
    map_fd_by_id,
    map_info,
    obj_get,
    obj_pin,
    prog_fd_by_id,
    prog_id,
    prog_map_ids,
)

# pyroute2 only where netlink is spoken: reading pins must stay cheap to import.
if TYPE_CHECKING:
    from pyroute2 import IPRoute

PIN_ROOT = "/sys/fs/bpf/natgw"
ENTRY = "natgw.c"

# tc clsact hook points and the filter natgw owns on each.
PARENTS = {"egress": 0xFFFFFFF3, "ingress": 0xFFFFFFF2}
FILTER_PRIO = 0x4E47  # "NG": a fixed priority and handle make replace atomic
FILTER_HANDLE = 0x4E47
ETH_P_ALL = 0x0003
ARPHRD_ETHER = 1
ETH_HLEN = 14

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DataplaneError(Exception):
    """Loading or attaching failed; one-line message."""


def pin_dir(gateway: str, root: str = PIN_ROOT) -> str:
    if not _NAME_RE.match(gateway):
        raise DataplaneError(f"gateway name {gateway!r}: use letters, digits, '.', '_', '-'")
    return os.path.join(root, gateway)


def bpf_dir() -> Path:
    """The directory of the dataplane's C source.

    An installed wheel carries it as natgw/bpf. An editable install has no
    copy (its package is the checkout's src/natgw), so there, and only there,
    it is the checkout's top-level bpf/.
    """
    packaged = resources.files("natgw") / "bpf"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = _editable_checkout()
    if checkout is not None and (checkout / "bpf").is_dir():
        return checkout / "bpf"
    raise DataplaneError("the dataplane source natgw/bpf is missing from this installation; "
                         "reinstall natgw")


def _editable_checkout() -> Path | None:
    """The checkout natgw is installed from in editable mode (PEP 610), else None."""
    try:
        raw = metadata.distribution("natgw").read_text("direct_url.json")
        info = json.loads(raw or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        return None
    url = urlsplit(info.get("url", ""))
    if not info.get("dir_info", {}).get("editable") or url.scheme != "file":
        return None
    root = Path(unquote(url.path))
    # Only the checkout this very package is imported from: an editable install
    # of another checkout must not lend its bpf/ to this one.
    here = Path(__file__).resolve().parents[1]
    return root if (root / "src" / "natgw").resolve() == here else None


def inline_source(path: Path | None = None) -> str:
    """The entry file (default: bpf/natgw.c) with its local #include "..." files inlined.

    bcc rewrites map accesses (map.lookup()) only in the main file, so the
    headers by concern must become part of it.
    """
    path = path if path is not None else bpf_dir() / ENTRY
    seen: set[Path] = set()

    def expand(p: Path) -> list[str]:
        out = []
        for line in p.read_text().splitlines():
            m = re.match(r'\s*#include "([^"]+)"', line)
            if m:
                inc = (p.parent / m.group(1)).resolve()
                if inc not in seen:
                    seen.add(inc)
                    out.append(f"/* --- {m.group(1)} --- */")
                    out.extend(expand(inc))
                continue
            out.append(line)
        return out

    return "\n".join(expand(path)) + "\n"


# The dataplane's programs, by name (C function natgw_<name>):
#   egress        translation after routing (tunnel and interface devices)
#   ingress       translation before routing (the same devices, fastpath off)
#   ingress_fast  ingress, then the fast path on the translated packet
#   lan           the fast path of LAN-side devices (no translation)
PROGRAM_NAMES = ("egress", "ingress", "ingress_fast", "lan")
# Which program runs on which hook of a device, by kind of device.
HOOKS_TRANSLATE = {"egress": "egress", "ingress": "ingress"}
HOOKS_TRANSLATE_FAST = {"egress": "egress", "ingress": "ingress_fast"}
HOOKS_LAN = {"ingress": "lan"}

_PROG_PIN_RE = re.compile(r"^prog_(\w+)_([0-9a-f]{12})$")


@dataclass
class Programs:
    """The loaded programs, fds by program name (owned by this object)."""

    fds: dict[str, int]
    build: str  # hash of source and flags: names the pins and the tc filters

    def fd(self, name: str) -> int:
        return self.fds[name]

    @property
    def egress_fd(self) -> int:
        return self.fds["egress"]

    @property
    def ingress_fd(self) -> int:
        return self.fds["ingress"]

    def filter_name(self, name: str) -> str:
        """The tc filter's name: program, build and program id, so that a program loaded
        again (same build, new maps) is told apart, and re-pinned from the filter alone.

        (The id is in the name because pyroute2 does not decode TCA_BPF_ID.)
        """
        return f"natgw_{name}:{self.build}:{prog_id(self.fd(name))}"

    def close(self) -> None:
        for fd in self.fds.values():
            if fd >= 0:
                os.close(fd)
        self.fds = {name: -1 for name in self.fds}


def filter_program(filter_name: str) -> str:
    """The program name (PROGRAM_NAMES) of a natgw filter's name, "" if not natgw's."""
    head = filter_name.partition(":")[0]
    return head[len("natgw_"):] if head.startswith("natgw_") else ""


def bpffs_mounted(path: str = "/sys/fs/bpf") -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1:3] == [path, "bpf"] for line in f)
    except OSError:
        return False


def ensure_bpffs(root: str = PIN_ROOT) -> None:
    base = os.path.dirname(root.rstrip("/")) or "/"
    if not bpffs_mounted(base):
        raise DataplaneError(
            f"no bpffs at {base}: mount it (mount -t bpf bpf {base}); note that "
            "`ip netns exec` hides it, use `natgw --netns NAME` instead"
        )
    os.makedirs(root, exist_ok=True)


def programs_for(fast: bool) -> tuple[str, ...]:
    """The programs a gateway attaches, with the fast path or without."""
    return ("egress", "ingress_fast", "lan") if fast else ("egress", "ingress")


def _maps_for(need: tuple[str, ...]) -> tuple[str, ...]:
    # Only the fast path's programs use fast_stats: without them its pin is not needed
    # (re-pinning from the attached programs finds only the maps they use).
    if "lan" in need or "ingress_fast" in need:
        return MAP_PINS
    return tuple(m for m in MAP_PINS if m != L.MAP_FAST_STATS)


def load_programs(gateway: str, root: str = PIN_ROOT,
                  need: tuple[str, ...] = PROGRAM_NAMES) -> Programs:
    """Load (or reuse the pinned) dataplane programs and maps of a gateway.

    need: the programs the caller attaches (programs_for). A pinned build is reused
    when their pins and the maps they use are there; a program no filter runs is
    not pinned again with the others when pins are removed by hand
    (repin_attached), and must not cost a compile. Reused, the Programs hold the
    pinned programs only."""
    ensure_bpffs(root)
    pdir = pin_dir(gateway, root)
    os.makedirs(pdir, exist_ok=True)
    source = inline_source()
    cflags = [f'-DNATGW_PIN_DIR="{pdir}"']
    build = hashlib.sha256((source + "\0" + " ".join(cflags)).encode()).hexdigest()[:12]
    pins = {d: os.path.join(pdir, f"prog_{d}_{build}") for d in PROGRAM_NAMES}
    if all(os.path.exists(pins[d]) for d in need) and not missing_map_pins(pdir, need):
        return Programs({d: obj_get(path) for d, path in pins.items() if os.path.exists(path)},
                        build)
    _check_pinned_maps(pdir)
    # A pin removed by hand: the programs are rebuilt against the maps that are
    # pinned (new ones where a pin is gone), so program pins of this build go too.
    for path in pins.values():
        if os.path.exists(path):
            os.unlink(path)

    try:
        from bcc import BPF  # noqa: PLC0415 - only loading needs bcc (and LLVM)
    except ImportError as e:
        raise DataplaneError(
            "bcc is not importable: install python3-bpfcc and use a venv made with "
            "--system-site-packages (make setup does both)"
        ) from e
    try:
        bpf = BPF(text=source.encode(), cflags=cflags)
        fds = {d: bpf.load_func(f"natgw_{d}".encode(), BPF.SCHED_CLS).fd for d in pins}
    except Exception as e:  # bcc raises bare Exception with the verifier log printed
        raise DataplaneError(f"loading the dataplane failed: {e}") from e
    for d, path in pins.items():
        obj_pin(fds[d], path)
    progs = Programs({d: os.dup(fd) for d, fd in fds.items()}, build)
    bpf.cleanup()
    _unpin_other_builds(pdir, build)
    return progs


MAP_PINS = L.MAP_NAMES


def missing_map_pins(pdir: str, need: tuple[str, ...] = PROGRAM_NAMES) -> list[str]:
    return [m for m in _maps_for(need) if not os.path.exists(os.path.join(pdir, m))]


def missing_pins(pdir: str, need: tuple[str, ...] = PROGRAM_NAMES) -> list[str]:
    """What a loaded gateway's pin directory lacks (maps, or programs of any build) for
    the programs `need`."""
    if not os.path.isdir(pdir):
        return [pdir]
    pinned = {m.group(1) for m in map(_PROG_PIN_RE.match, os.listdir(pdir)) if m}
    return missing_map_pins(pdir, need) + [f"prog_{d}" for d in need if d not in pinned]


def repin_attached(gateway: str, netns: str | None, devices: list[str],
                   root: str = PIN_ROOT) -> list[str]:
    """Pin again what the gateway's attached filters run, where its pins were removed.

    The programs and maps are alive (a filter holds them): pinning them again
    keeps every mapping and counter and needs no compiler. Returns what was pinned.
    """
    pdir = pin_dir(gateway, root)
    done: list[str] = []
    with ipr_in(netns) as ipr:
        for dev in devices:
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                continue
            for parent in PARENTS.values():
                name, pid = _filters(ipr, idx[0], parent).get(FILTER_PRIO, ("", 0))
                prog = filter_program(name)
                if prog not in PROGRAM_NAMES or not pid:
                    continue
                os.makedirs(pdir, exist_ok=True)
                fd = prog_fd_by_id(pid)
                try:
                    build = name.split(":")[1]
                    path = os.path.join(pdir, f"prog_{prog}_{build}")
                    if not os.path.exists(path):
                        obj_pin(fd, path)
                        done.append(os.path.basename(path))
                    for map_id in prog_map_ids(fd):
                        mfd = map_fd_by_id(map_id)
                        try:
                            mname = map_info(mfd).name
                            mpath = os.path.join(pdir, mname)
                            if mname in MAP_PINS and not os.path.exists(mpath):
                                obj_pin(mfd, mpath)
                                done.append(mname)
                        finally:
                            os.close(mfd)
                finally:
                    os.close(fd)
    return done


def _check_pinned_maps(pdir: str) -> None:
    """Refuse to compile against pinned maps of another layout (bcc would fail obscurely)."""
    from .tables import Tables  # noqa: PLC0415

    if not os.path.exists(os.path.join(pdir, L.MAP_XLATE_V4)):
        return
    try:
        Tables(pdir).close()
    except BpfError as e:
        raise DataplaneError(str(e)) from e


def _unpin_other_builds(pdir: str, build: str) -> None:
    # Attached filters hold their own reference: unpinning detaches nothing.
    for name in os.listdir(pdir):
        if name.startswith("prog_") and not name.endswith(build):
            os.unlink(os.path.join(pdir, name))


@contextmanager
def ipr_in(netns: str | None):
    """An IPRoute socket in a named netns (natgw itself stays in its mount namespace)."""
    try:
        ipr = iproute(netns)
    except Exception as e:
        raise DataplaneError(f"netns {netns}: {e}") from e
    try:
        yield ipr
    finally:
        ipr.close()


def link_index(ipr: IPRoute, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise DataplaneError(f"device {ifname}: not found")
    return idx[0]


def _filters(ipr: IPRoute, ifindex: int, parent: int) -> dict[int, tuple[str, int]]:
    """prio -> (cls_bpf program name, program id) of the filters on a clsact hook."""
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


def _filter_names(ipr: IPRoute, ifindex: int, parent: int) -> dict[int, str]:
    """prio -> cls_bpf program name of the filters on a clsact hook."""
    return {prio: name for prio, (name, _) in _filters(ipr, ifindex, parent).items()}


def natgw_filters(ipr: IPRoute, ifindex: int) -> dict[str, str]:
    """hook ("egress", "ingress") -> program name of natgw's filters on a device."""
    out = {}
    for hook, parent in PARENTS.items():
        prog = filter_program(_filter_names(ipr, ifindex, parent).get(FILTER_PRIO, ""))
        if prog:
            out[hook] = prog
    return out


def has_clsact(ipr: IPRoute, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def attach(ipr: IPRoute, ifindex: int, progs: Programs,
           hooks: dict[str, str] | None = None) -> bool:
    """Attach programs to a device's clsact hooks: hooks maps a hook ("egress",
    "ingress") to a program name (default HOOKS_TRANSLATE).

    Return: True if natgw created the clsact qdisc. A filter already running
    this program of this build is left alone; another program or build is
    replaced atomically. natgw's filter on a hook not in `hooks` is removed (a
    device that changes kind, e.g. fastpath turned off, keeps no stale program).
    """
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    created = False
    try:
        ipr.tc("add", "clsact", ifindex)
        created = True
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise DataplaneError(f"ifindex {ifindex}: adding clsact failed: {e}") from e
    hooks = HOOKS_TRANSLATE if hooks is None else hooks
    for hook, parent in PARENTS.items():
        if hook not in hooks:
            _del_filter(ipr, ifindex, parent)
            continue
        name = progs.filter_name(hooks[hook])
        # The same build may have been loaded again (its pins were removed): only the
        # very program pinned now, with the maps pinned now, counts as attached.
        if _filter_names(ipr, ifindex, parent).get(FILTER_PRIO) == name:
            continue
        try:
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=progs.fd(hooks[hook]),
                   name=name, parent=parent, classid=1, direct_action=True,
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as e:
            raise DataplaneError(f"ifindex {ifindex}: attaching {hook} failed: {e}") from e
    return created


def _del_filter(ipr: IPRoute, ifindex: int, parent: int) -> None:
    """Remove natgw's filter (by priority and handle) from a hook, if it is there."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    if FILTER_PRIO not in _filter_names(ipr, ifindex, parent):
        return
    try:
        ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=parent,
               prio=FILTER_PRIO, protocol=ETH_P_ALL)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def detach(ipr: IPRoute, ifindex: int, remove_qdisc: bool) -> None:
    """Remove natgw's filters; the clsact qdisc too if natgw made it and it is now empty."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    for parent in PARENTS.values():
        _del_filter(ipr, ifindex, parent)
    if remove_qdisc and not any(_filter_names(ipr, ifindex, p) for p in PARENTS.values()):
        try:
            ipr.tc("del", "clsact", ifindex)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise


def l3_offset(ipr: IPRoute, ifindex: int) -> int:
    """Where IP starts in packets of a device: after Ethernet on L2 devices, else 0."""
    link = ipr.get_links(ifindex)[0]
    return ETH_HLEN if link["ifi_type"] == ARPHRD_ETHER else 0


def veth_peer_elsewhere(ipr: IPRoute, ifindex: int) -> bool:
    """A veth whose peer lives in another netns (IFLA_LINK_NETNSID): bpf_redirect_peer
    can hand packets straight to that peer (it refuses a peer in the same netns)."""
    link = ipr.get_links(ifindex)[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return kind == "veth" and link.get_attr("IFLA_LINK_NETNSID") is not None


def filter_uses_map(ipr: IPRoute, ifindex: int, hook: str, map_id: int) -> bool:
    """Whether natgw's filter on a hook runs a program using the map `map_id` (tells
    one gateway's filters from another's: each has its own `devices` map)."""
    _, pid = _filters(ipr, ifindex, PARENTS[hook]).get(FILTER_PRIO, ("", 0))
    if not pid:
        return False
    try:
        fd = prog_fd_by_id(pid)
    except BpfError:
        return False  # unloaded meanwhile
    try:
        return map_id in prog_map_ids(fd)
    finally:
        os.close(fd)
