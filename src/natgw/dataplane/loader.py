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
from .bpfsys import BpfError, obj_get, obj_pin

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


@dataclass
class Programs:
    """The loaded egress and ingress programs (fds owned by this object)."""

    egress_fd: int
    ingress_fd: int
    build: str  # hash of source and flags: names the pins and the tc filters

    def fd(self, direction: str) -> int:
        return self.egress_fd if direction == "egress" else self.ingress_fd

    def filter_name(self, direction: str) -> str:
        return f"natgw_{direction}:{self.build}"

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
    """Load (or reuse the pinned) dataplane programs and maps of a gateway."""
    ensure_bpffs(root)
    pdir = pin_dir(gateway, root)
    os.makedirs(pdir, exist_ok=True)
    source = inline_source()
    cflags = [f'-DNATGW_PIN_DIR="{pdir}"']
    build = hashlib.sha256((source + "\0" + " ".join(cflags)).encode()).hexdigest()[:12]
    pins = {d: os.path.join(pdir, f"prog_{d}_{build}") for d in ("egress", "ingress")}
    if all(os.path.exists(p) for p in pins.values()):
        return Programs(obj_get(pins["egress"]), obj_get(pins["ingress"]), build)
    _check_pinned_maps(pdir)

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
    progs = Programs(os.dup(fds["egress"]), os.dup(fds["ingress"]), build)
    bpf.cleanup()
    _unpin_other_builds(pdir, build)
    return progs


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


def _filter_names(ipr: IPRoute, ifindex: int, parent: int) -> dict[int, str]:
    """prio -> cls_bpf program name of the filters on a clsact hook."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    out = {}
    try:
        for msg in ipr.get_filters(index=ifindex, parent=parent):
            opts = msg.get_attr("TCA_OPTIONS")
            if msg.get_attr("TCA_KIND") == "bpf" and opts is not None:
                out[msg["info"] >> 16] = opts.get_attr("TCA_BPF_NAME") or ""
    except NetlinkError as e:
        if e.code not in (errno.EINVAL, errno.ENOENT):
            raise
    return out


def attach(ipr: IPRoute, ifindex: int, progs: Programs) -> bool:
    """Attach both programs to a device's clsact hooks.

    Return: True if natgw created the clsact qdisc. A filter already running
    this build is left alone; another build is replaced atomically.
    """
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    created = False
    try:
        ipr.tc("add", "clsact", ifindex)
        created = True
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise DataplaneError(f"ifindex {ifindex}: adding clsact failed: {e}") from e
    for direction, parent in PARENTS.items():
        name = progs.filter_name(direction)
        if _filter_names(ipr, ifindex, parent).get(FILTER_PRIO) == name:
            continue
        try:
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=progs.fd(direction),
                   name=name, parent=parent, classid=1, direct_action=True,
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as e:
            raise DataplaneError(f"ifindex {ifindex}: attaching {direction} failed: {e}") from e
    return created


def detach(ipr: IPRoute, ifindex: int, remove_qdisc: bool) -> None:
    """Remove natgw's filters; the clsact qdisc too if natgw made it and it is now empty."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    for parent in PARENTS.values():
        if FILTER_PRIO not in _filter_names(ipr, ifindex, parent):
            continue
        try:
            ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=parent,
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise
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
