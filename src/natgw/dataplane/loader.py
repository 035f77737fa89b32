"""Compile the dataplane with bcc, pin it, and attach it to devices (natgw.dataplane.hooks:
tcx links, or clsact + cls_bpf filters on kernels before 6.6).

Programs, maps and tcx links are pinned under /sys/fs/bpf/natgw/<gateway>/.
Program pins carry a hash of their source, so a second `natgw up` reuses what
is loaded (no compile, no re-attach) and a new natgw version replaces the
programs atomically while the maps, and the mappings in them, stay.

The C source is the checkout's top-level bpf/, shipped in the wheel as the
package data natgw/bpf (see pyproject.toml).
"""

from __future__ import annotations

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
    link_fd_by_id,
    map_fd_by_id,
    map_info,
    obj_get,
    obj_pin,
    prog_fd_by_id,
    prog_info,
    prog_map_ids,
)
from .hooks import (  # noqa: F401 - ETH_P_ALL ... has_clsact: where they were before tcx
    ETH_P_ALL,
    FILTER_PRIO,
    PARENTS,
    TCX,
    Attached,
    HookError,
    attach_hook,
    attached,
    detach_hook,
    has_clsact,
    link_pin_name,
    prune_link_pins,
    remove_clsact_if_empty,
)

# pyroute2 only where netlink is spoken: reading pins must stay cheap to import.
if TYPE_CHECKING:
    from pyroute2 import IPRoute

PIN_ROOT = "/sys/fs/bpf/natgw"
ENTRY = "natgw.c"

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
#   xdp           the fast path at XDP (fastpath: xdp), translating itself
PROGRAM_NAMES = ("egress", "ingress", "ingress_fast", "lan", "xdp")
XDP_PROGRAMS = ("xdp",)  # loaded as XDP programs; the others are tc (SCHED_CLS)
# Which program runs on which hook of a device, by kind of device.
HOOKS_TRANSLATE = {"egress": "egress", "ingress": "ingress"}
HOOKS_TRANSLATE_FAST = {"egress": "egress", "ingress": "ingress_fast"}
HOOKS_LAN = {"ingress": "lan"}

_PROG_PIN_RE = re.compile(r"^prog_(\w+)_([0-9a-f]{12})$")


@dataclass
class Programs:
    """The loaded programs, fds by program name (owned by this object)."""

    fds: dict[str, int]
    build: str  # hash of source and flags: names the pins, the tc filters and tcx links
    pin_dir: str = ""  # where the programs (and the tcx links running them) are pinned

    def fd(self, name: str) -> int:
        return self.fds[name]

    @property
    def egress_fd(self) -> int:
        return self.fds["egress"]

    @property
    def ingress_fd(self) -> int:
        return self.fds["ingress"]

    def pin(self, name: str) -> str:
        """The program's pin: prog_<program>_<build> (hooks name filters and links by it)."""
        return os.path.join(self.pin_dir, f"prog_{name}_{self.build}")

    def tags(self) -> dict[str, str]:
        """pin name -> program tag: what a gateway records, so that programs still
        attached can be pinned again under their build when their pins are removed."""
        return {os.path.basename(self.pin(n)): prog_info(fd).tag
                for n, fd in self.fds.items() if fd >= 0}

    def close(self) -> None:
        for fd in self.fds.values():
            if fd >= 0:
                os.close(fd)
        self.fds = {name: -1 for name in self.fds}


def filter_program(filter_name: str) -> str:
    """The program name (PROGRAM_NAMES) of a natgw filter's name, "" if not natgw's."""
    head = filter_name.partition(":")[0]
    return head[len("natgw_"):] if head.startswith("natgw_") else ""


# The kernel keeps 15 characters of a program's name (natgw_ingress_fast is
# "natgw_ingress_f"): what a tcx query reports, mapped back to PROGRAM_NAMES.
_KERNEL_NAMES = {f"natgw_{n}"[:15]: n for n in PROGRAM_NAMES}


def hook_program(hook: Attached) -> str:
    """The program name (PROGRAM_NAMES) natgw runs on a hook, "" if unknown."""
    if hook.filter_name:
        return filter_program(hook.filter_name)
    return _KERNEL_NAMES.get(hook.name, "")


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


def programs_for(fast: bool, xdp: bool = False) -> tuple[str, ...]:
    """The programs a gateway attaches, with the fast path (and XDP) or without."""
    if not fast:
        return ("egress", "ingress")
    return ("egress", "ingress_fast", "lan") + (("xdp",) if xdp else ())


def _maps_for(need: tuple[str, ...]) -> tuple[str, ...]:
    # Only the fast path's programs use fast_stats, only XDP the XDP maps: without them
    # their pins are not needed (re-pinning from the attached programs finds only the
    # maps they use).
    skip = set()
    if not {"lan", "ingress_fast", "xdp"} & set(need):
        skip.add(L.MAP_FAST_STATS)
    if "xdp" not in need:
        skip |= {L.MAP_XDP_TX, L.MAP_XDP_MACS}
    return tuple(m for m in MAP_PINS if m not in skip)


def load_programs(gateway: str, root: str = PIN_ROOT,
                  need: tuple[str, ...] = PROGRAM_NAMES) -> Programs:
    """Load (or reuse the pinned) dataplane programs and maps of a gateway.

    need: the programs the caller attaches (programs_for). A pinned build is reused
    when their pins and the maps they use are there; a program no hook runs is
    not pinned again with the others when pins are removed by hand
    (repin_attached), and must not cost a compile. Reused, the Programs hold the
    pinned programs only.

    Maps pinned by the previous layout are taken over (see upgrade.py) before
    this returns, so the caller's attach finds every mapping in place.
    """
    from . import upgrade  # noqa: PLC0415 - reading pins must stay cheap to import

    ensure_bpffs(root)
    pdir = pin_dir(gateway, root)
    os.makedirs(pdir, exist_ok=True)
    try:
        upgrade.check(pdir)
    except upgrade.UpgradeError as e:
        raise DataplaneError(str(e)) from e
    progs = _load(pdir, need)
    try:
        upgrade.migrate(pdir)
    except (upgrade.UpgradeError, OSError) as e:
        progs.close()
        raise DataplaneError(f"taking over the previous version's maps: {e}") from e
    return progs


def _load(pdir: str, need: tuple[str, ...]) -> Programs:
    source = inline_source()
    cflags = [f'-DNATGW_PIN_DIR="{pdir}"']
    if os.environ.get("NATGW_BPF_BTF") == "0":
        # No debug info, so no BTF: bpftool dumps maps in hex, and the compile
        # takes about 1.5 s less (make test compiles the dataplane ~100 times).
        cflags.append("-g0")
    build = hashlib.sha256((source + "\0" + " ".join(cflags)).encode()).hexdigest()[:12]
    pins = {d: os.path.join(pdir, f"prog_{d}_{build}") for d in PROGRAM_NAMES}
    if all(os.path.exists(pins[d]) for d in need) and not missing_map_pins(pdir, need):
        return Programs({d: obj_get(path) for d, path in pins.items() if os.path.exists(path)},
                        build, pdir)
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
    # Only the programs the caller attaches are loaded: the verifier's time is
    # most of a load after the compile. A later caller needing another one finds
    # its pin missing and compiles again.
    try:
        bpf = BPF(text=source.encode(), cflags=cflags)
        fds = {d: bpf.load_func(f"natgw_{d}".encode(),
                                BPF.XDP if d in XDP_PROGRAMS else BPF.SCHED_CLS).fd
               for d in pins if d in need}
    except Exception as e:  # bcc raises bare Exception with the verifier log printed
        raise DataplaneError(f"loading the dataplane failed: {e}") from e
    for d, fd in fds.items():
        obj_pin(fd, pins[d])
    progs = Programs({d: os.dup(fd) for d, fd in fds.items()}, build, pdir)
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
                   tags: dict[str, str] | None = None, root: str = PIN_ROOT) -> list[str]:
    """Pin again what runs on the gateway's devices, where its pins were removed.

    The programs and maps are alive (a tcx link, a filter or an XDP attachment
    holds them): pinning them again keeps every mapping and counter and needs no
    compiler. A program is pinned under its build: the pin whose tag `tags` (pin
    name -> tag, as the gateway recorded Programs.tags()) says, or the one its tc
    filter names; tcx links are pinned again too. Returns what was pinned.
    """
    pdir = pin_dir(gateway, root)
    by_tag = {tag: name for name, tag in (tags or {}).items()}
    done: list[str] = []
    with ipr_in(netns) as ipr:
        for dev in devices:
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                continue
            hooks = attached(ipr, idx[0])
            running: list[tuple[int, str | None]] = []
            for hook in hooks.values():
                program, _, build = hook.filter_name.partition(":")
                running.append((hook.prog_id, f"prog_{program.removeprefix('natgw_')}_"
                                f"{build.partition(':')[0]}" if build else None))
            xdp_id = _natgw_xdp_id(ipr, idx[0])
            if xdp_id:
                running.append((xdp_id, None))
            for pid, fallback in running:
                os.makedirs(pdir, exist_ok=True)
                fd = prog_fd_by_id(pid)
                try:
                    done += _pin_missing(fd, pdir, by_tag.get(prog_info(fd).tag) or fallback)
                finally:
                    os.close(fd)
            for direction, hook in hooks.items():
                if hook.link_id:
                    lfd = link_fd_by_id(hook.link_id)
                    try:
                        done += _pin_missing(lfd, pdir, link_pin_name(direction, dev),
                                             maps=False)
                    finally:
                        os.close(lfd)
    return done


def _pin_missing(fd: int, pdir: str, name: str | None, maps: bool = True) -> list[str]:
    """Pin an object (a program: and its maps) where its pin is missing."""
    done = []
    if name is not None and not os.path.exists(os.path.join(pdir, name)):
        obj_pin(fd, os.path.join(pdir, name))
        done.append(name)
    for map_id in prog_map_ids(fd) if maps else []:
        mfd = map_fd_by_id(map_id)
        try:
            mname = map_info(mfd).name
            mpath = os.path.join(pdir, mname)
            if mname in MAP_PINS and not os.path.exists(mpath):
                obj_pin(mfd, mpath)
                done.append(mname)
        finally:
            os.close(mfd)
    return done


def _natgw_xdp_id(ipr: IPRoute, ifindex: int) -> int:
    """The id of natgw's XDP program on a device, 0 if it runs none."""
    from .xdp import PROG_NAME, XDP_ATTACHED_DRV, attached, program_name  # noqa: PLC0415

    mode, pid = attached(ipr, ifindex)
    return pid if mode == XDP_ATTACHED_DRV and program_name(pid) == PROG_NAME else 0


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


def natgw_filters(ipr: IPRoute, ifindex: int) -> dict[str, str]:
    """hook ("egress", "ingress") -> program name of natgw's programs on a device
    (tcx links or tc filters)."""
    out = {}
    for hook, found in attached(ipr, ifindex).items():
        prog = hook_program(found)
        if prog:
            out[hook] = prog
    return out


def attach(ipr: IPRoute, ifindex: int, progs: Programs,
           hooks: dict[str, str] | None = None, own_qdisc: bool = False) -> bool:
    """Attach programs to a device (hooks.attach_hook: idempotent, atomic): hooks maps
    a hook ("egress", "ingress") to a program name (default HOOKS_TRANSLATE).

    natgw's program on a hook not in `hooks` is removed (a device that changes kind,
    e.g. fastpath turned off, keeps no stale program). own_qdisc: natgw made the
    device's clsact qdisc (before tcx, or on an older kernel); once natgw's filters
    are off it and it is empty, it goes.
    Return: whether natgw owns a clsact qdisc on the device now.
    """
    hooks = HOOKS_TRANSLATE if hooks is None else hooks
    try:
        for direction in ("egress", "ingress"):
            if direction in hooks:
                prog = hooks[direction]
                own_qdisc |= attach_hook(ipr, ifindex, direction, progs.fd(prog),
                                         progs.pin(prog))
            else:
                detach_hook(ipr, ifindex, direction)
        prune_link_pins(progs.pin_dir)
        if own_qdisc and all(h.mechanism == TCX for h in attached(ipr, ifindex).values()):
            own_qdisc = not remove_clsact_if_empty(ipr, ifindex)
    except HookError as e:
        raise DataplaneError(str(e)) from e
    return own_qdisc


def detach(ipr: IPRoute, ifindex: int, remove_qdisc: bool, pins: str | None = None) -> None:
    """Remove natgw's programs from a device: its XDP program first (it passes packets
    on to the tc hooks), then its tc-hook programs (both mechanisms); the clsact qdisc
    too if natgw made it and it is now empty; with pins (the pin directory), unpin
    links that no longer run."""
    from .xdp import detach_xdp  # noqa: PLC0415 - xdp builds on this module

    detach_xdp(ipr, ifindex)
    try:
        for direction in ("egress", "ingress"):
            detach_hook(ipr, ifindex, direction)
    except HookError as e:
        raise DataplaneError(str(e)) from e
    if remove_qdisc:
        remove_clsact_if_empty(ipr, ifindex)
    if pins is not None:
        prune_link_pins(pins)


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
    """Whether natgw's program on a hook uses the map `map_id` (tells one gateway's
    programs from another's: each has its own `devices` map)."""
    found = attached(ipr, ifindex).get(hook)
    if found is None:
        return False
    try:
        fd = prog_fd_by_id(found.prog_id)
    except BpfError:
        return False  # unloaded meanwhile
    try:
        return map_id in prog_map_ids(fd)
    finally:
        os.close(fd)
