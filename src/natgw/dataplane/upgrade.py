"""Take over the pinned maps of the previous dataplane layout on `natgw up`.

Until the tables became hashes per prefix length, a gateway pinned LPM tries
(`xlate_v4`, `xlate_v6`) and device entries without prefix length bits
(`devices`). This layout's maps have other names (layout.MAP_NAMES), so both
sets can be pinned side by side: the loader compiles the new programs (which
creates the new maps), copies every device and entry over with their counter
slots and mapping ids (the counters, `map_stats` and `dev_stats`, keep their
layout and pins), and then unpins the old maps. The old programs, still
attached until the gateway attaches the new ones, hold their maps alive and
keep translating meanwhile; the new programs find every mapping in place.

A kill at any point is repaired by the next `natgw up`: the old pins go only
after everything is copied, and copying again writes the same values.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os

from . import layout as L
from .bpfsys import BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE, BpfError, Map, map_info, obj_get
from .tables import Tables, _key

# The previous layout (bpf/natgw_shared.h before the hash tables), for reading only.
KEY_FIXED_BITS = 64  # the LPM key's ifindex and table, matched exactly


class LpmV4Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
                ("table", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class LpmV6Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
                ("table", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class Device(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("l3_offset", ctypes.c_uint16),
                ("mss_v4", ctypes.c_uint16), ("mss_v6", ctypes.c_uint16),
                ("flags", ctypes.c_uint16)]


# pin name -> (map type, key, value); entries first, devices last (the order of unpinning).
LEGACY = {
    "xlate_v4": (BPF_MAP_TYPE_LPM_TRIE, LpmV4Key, L.Xlate),
    "xlate_v6": (BPF_MAP_TYPE_LPM_TRIE, LpmV6Key, L.Xlate),
    "devices": (BPF_MAP_TYPE_HASH, ctypes.c_uint32, Device),
}


class UpgradeError(Exception):
    """Pins that cannot be taken over; one-line message saying what to do."""


def legacy_pins(pdir: str) -> list[str]:
    """Pins of the previous layout in a gateway's pin directory."""
    return [name for name in LEGACY if os.path.exists(os.path.join(pdir, name))]


def _open(pdir: str, name: str) -> Map:
    kind, key, value = LEGACY[name]
    path = os.path.join(pdir, name)
    try:
        fd = obj_get(path)
    except BpfError as e:
        raise UpgradeError(f"{path}: {e.strerror}") from e
    try:
        info = map_info(fd)
        if info.type != kind:
            raise UpgradeError(_unknown(pdir, name))
        return Map(fd, key, value, name)
    except (BpfError, UpgradeError) as e:
        os.close(fd)
        if isinstance(e, UpgradeError):
            raise
        raise UpgradeError(_unknown(pdir, name)) from e


def _unknown(pdir: str, name: str) -> str:
    return (f"{os.path.join(pdir, name)}: pinned by a natgw version this one cannot take over; "
            "run `natgw down` with the version that started the gateway, then `natgw up`")


def check(pdir: str) -> None:
    """Refuse, before anything is compiled, old pins of a layout other than the previous one."""
    for name in legacy_pins(pdir):
        _open(pdir, name).close()


def migrate(pdir: str) -> int:
    """Copy the old pins' devices and entries into this layout's maps, then unpin them.

    The new maps must be pinned (the new programs loaded). Returns the entries copied.
    """
    names = legacy_pins(pdir)
    if not names:
        return 0
    old = {name: _open(pdir, name) for name in names}
    copied = 0
    try:
        with Tables(pdir) as t:
            if "devices" in old:
                for key, d in old["devices"].items():
                    _copy_device(t, int(key.value), d)
            for version, name in ((4, "xlate_v4"), (6, "xlate_v6")):
                if name not in old:
                    continue
                for key, value in old[name].items():
                    net = ipaddress.ip_network((bytes(key.addr),
                                                key.prefixlen - KEY_FIXED_BITS))
                    # The entry, then its prefix length bit, as Tables writes them.
                    t._xlate(version).update(_key(version, key.ifindex, key.table, net), value)
                    t._add_plen(key.ifindex, version, key.table, net.prefixlen)
                    copied += 1
    finally:
        for m in old.values():
            m.close()
    for name in names:  # everything is copied: the old pins may go
        os.unlink(os.path.join(pdir, name))
    return copied


def _copy_device(t: Tables, ifindex: int, d: Device) -> None:
    """The device with its counter slot (its counters stay where they are)."""
    dev = t.device(ifindex)
    if dev is None:
        dev = L.Device()
        dev.slot = d.slot
    dev.l3_offset, dev.mss_v4, dev.mss_v6, dev.flags = d.l3_offset, d.mss_v4, d.mss_v6, d.flags
    t.devices.update(ctypes.c_uint32(ifindex), dev)
