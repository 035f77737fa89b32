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


@dataclass
class Programs:
    """The loaded egress and ingress programs (fds owned by this object)."""

    egress_fd: int
    ingress_fd: int
    build: str  # hash of source and flags: names the pins and the tc filters
    pin_dir: str = ""  # where the programs (and the tcx links running them) are pinned

    def fd(self, direction: str) -> int:
        return self.egress_fd if direction == "egress" else self.ingress_fd

    def pin(self, direction: str) -> str:
        """The program's pin: prog_<program>_<build> (hooks name filters and links by it)."""
        return os.path.join(self.pin_dir, f"prog_{direction}_{self.build}")

    def tags(self) -> dict[str, str]:
        """pin name -> program tag: what a gateway records, so that programs still
        attached can be pinned again under their build when their pins are removed."""
        return {os.path.basename(self.pin(d)): prog_info(self.fd(d)).tag
                for d in ("egress", "ingress")}

    def close(self) -> None:
        for fd in (self.egress_fd, self.ingress_fd):
            if fd >= 0:
                os.close(fd)
        self.egress_fd = self.ingress_fd = -1


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


def load_programs(gateway: str, root: str = PIN_ROOT) -> Programs:
    """Load (or reuse the pinned) dataplane programs and maps of a gateway.

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
    progs = _load(pdir)
    try:
        upgrade.migrate(pdir)
    except (upgrade.UpgradeError, OSError) as e:
        progs.close()
        raise DataplaneError(f"taking over the previous version's maps: {e}") from e
    return progs


def _load(pdir: str) -> Programs:
    source = inline_source()
    cflags = [f'-DNATGW_PIN_DIR="{pdir}"']
    build = hashlib.sha256((source + "\0" + " ".join(cflags)).encode()).hexdigest()[:12]
    pins = {d: os.path.join(pdir, f"prog_{d}_{build}") for d in ("egress", "ingress")}
    if all(os.path.exists(p) for p in pins.values()) and not missing_map_pins(pdir):
        return Programs(obj_get(pins["egress"]), obj_get(pins["ingress"]), build, pdir)
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
    progs = Programs(os.dup(fds["egress"]), os.dup(fds["ingress"]), build, pdir)
    bpf.cleanup()
    _unpin_other_builds(pdir, build)
    return progs


MAP_PINS = (L.MAP_XLATE_V4, L.MAP_XLATE_V6, L.MAP_DEVICES, L.MAP_MAP_STATS, L.MAP_DEV_STATS)


def missing_map_pins(pdir: str) -> list[str]:
    return [m for m in MAP_PINS if not os.path.exists(os.path.join(pdir, m))]


def missing_pins(pdir: str) -> list[str]:
    """What a loaded gateway's pin directory lacks (maps, or programs of any build)."""
    if not os.path.isdir(pdir):
        return [pdir]
    names = os.listdir(pdir)
    out = missing_map_pins(pdir)
    for d in ("egress", "ingress"):
        if not any(n.startswith(f"prog_{d}_") for n in names):
            out.append(f"prog_{d}")
    return out


def repin_attached(gateway: str, netns: str | None, devices: list[str],
                   tags: dict[str, str] | None = None, root: str = PIN_ROOT) -> list[str]:
    """Pin again what runs on the gateway's devices, where its pins were removed.

    The programs and maps are alive (a tcx link or a filter holds them): pinning
    them again keeps every mapping and counter and needs no compiler. A program
    is pinned under its build: the one its tc filter names, or the pin whose tag
    `tags` (pin name -> tag, as the gateway recorded Programs.tags()) says; tcx
    links are pinned again too. Returns what was pinned.
    """
    pdir = pin_dir(gateway, root)
    by_tag = {tag: name for name, tag in (tags or {}).items()}
    done: list[str] = []
    with ipr_in(netns) as ipr:
        for dev in devices:
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                continue
            for direction, hook in attached(ipr, idx[0]).items():
                os.makedirs(pdir, exist_ok=True)
                fd = prog_fd_by_id(hook.prog_id)
                try:
                    program, _, build = hook.filter_name.partition(":")
                    name = by_tag.get(prog_info(fd).tag) or (
                        f"prog_{program.removeprefix('natgw_')}_{build.partition(':')[0]}"
                        if build else None)
                    done += _pin_missing(fd, pdir, name)
                finally:
                    os.close(fd)
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


def attach(ipr: IPRoute, ifindex: int, progs: Programs, own_qdisc: bool = False) -> bool:
    """Attach both programs to a device (hooks.attach_hook: idempotent, atomic).

    own_qdisc: natgw made the device's clsact qdisc (before tcx, or on an older
    kernel); once natgw's filters are off it and it is empty, it goes.
    Return: whether natgw owns a clsact qdisc on the device now.
    """
    try:
        for direction in ("egress", "ingress"):
            own_qdisc |= attach_hook(ipr, ifindex, direction, progs.fd(direction),
                                     progs.pin(direction))
        prune_link_pins(progs.pin_dir)
        if own_qdisc and all(h.mechanism == TCX for h in attached(ipr, ifindex).values()):
            own_qdisc = not remove_clsact_if_empty(ipr, ifindex)
    except HookError as e:
        raise DataplaneError(str(e)) from e
    return own_qdisc


def detach(ipr: IPRoute, ifindex: int, remove_qdisc: bool, pins: str | None = None) -> None:
    """Remove natgw's programs from a device (both mechanisms); the clsact qdisc too if
    natgw made it and it is now empty; with pins (the pin directory), unpin links
    that no longer run."""
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
