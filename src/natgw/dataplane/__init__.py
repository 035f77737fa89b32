"""The translation dataplane: load, attach, map, count.

    from natgw.dataplane import Dataplane, Mapping
    dp = Dataplane.load("cluster1")
    dp.attach("cluster1-c2", netns="gw1", mtu=1420)
    dp.set_mappings("cluster1-c2", [Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16")],
                    netns="gw1")
    dp.counters()
"""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import layout
from .loader import (
    HOOKS_LAN,
    HOOKS_TRANSLATE,
    HOOKS_TRANSLATE_FAST,
    PIN_ROOT,
    PROGRAM_NAMES,
    DataplaneError,
    Programs,
    attach,
    detach,
    ipr_in,
    l3_offset,
    link_index,
    load_programs,
    pin_dir,
    veth_peer_elsewhere,
)
from .tables import Counter, InstalledMapping, Mapping, TableError, Tables

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = [
    "HOOKS_LAN", "HOOKS_TRANSLATE", "HOOKS_TRANSLATE_FAST",
    "Counter", "Dataplane", "DataplaneError", "DeviceInfo", "InstalledMapping", "Mapping",
    "TableError", "Tables", "layout", "mss_for_mtu",
]


def mss_for_mtu(mtu: int) -> tuple[int, int]:
    """TCP MSS (IPv4, IPv6) that fits a tunnel MTU: minus IP and TCP headers."""
    return mtu - 40, mtu - 60


@dataclass(frozen=True)
class DeviceInfo:
    ifindex: int
    l3_offset: int
    mss_v4: int
    mss_v6: int
    own_qdisc: bool


class Dataplane:
    """The dataplane of one gateway: its pinned programs and maps."""

    def __init__(self, gateway: str, programs: Programs | None, root: str = PIN_ROOT) -> None:
        self.gateway = gateway
        self.pin_dir = pin_dir(gateway, root)
        self.programs = programs
        self.tables = Tables(self.pin_dir)

    @classmethod
    def load(cls, gateway: str, root: str = PIN_ROOT,
             need: tuple[str, ...] = PROGRAM_NAMES) -> Dataplane:
        """Load the programs (compiling only when no pinned build of `need` matches)."""
        return cls(gateway, load_programs(gateway, root, need), root)

    @classmethod
    def open(cls, gateway: str, root: str = PIN_ROOT) -> Dataplane:
        """Open a running gateway's maps without loading programs (no compiler)."""
        pdir = pin_dir(gateway, root)
        if not os.path.isdir(pdir):
            raise DataplaneError(f"gateway {gateway}: not loaded (no {pdir})")
        return cls(gateway, None, root)

    def close(self) -> None:
        self.tables.close()
        if self.programs:
            self.programs.close()

    def __enter__(self) -> Dataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ifindex(self, ifname: str, netns: str | None = None) -> int:
        with ipr_in(netns) as ipr:
            return link_index(ipr, ifname)

    def attach(self, ifname: str, netns: str | None = None, mtu: int | None = None,
               fast: bool = False) -> DeviceInfo:
        """Translate on a device: set its entry, attach both programs (idempotent).

        mtu: the tunnel MTU; TCP SYNs crossing the device get their MSS clamped
        to fit it. None disables clamping. fast: its ingress program also
        forwards (natgw_ingress_fast); switching replaces the filter atomically.
        """
        mss4, mss6 = mss_for_mtu(mtu) if mtu else (0, 0)
        return self._attach(ifname, netns, mss4, mss6, False,
                            HOOKS_TRANSLATE_FAST if fast else HOOKS_TRANSLATE)

    def attach_lan(self, ifname: str, netns: str | None = None,
                   ipr: IPRoute | None = None) -> DeviceInfo:
        """Run the fast path on a LAN-side device's ingress (idempotent): no mappings, no
        egress program; a veth whose peer is in another netns is marked for redirect_peer.
        ipr: an open socket in netns to use (each new one costs tens of ms)."""
        return self._attach(ifname, netns, 0, 0, True, HOOKS_LAN, ipr)

    def _attach(self, ifname: str, netns: str | None, mss4: int, mss6: int, lan: bool,
                hooks: dict[str, str], ipr: IPRoute | None = None) -> DeviceInfo:
        if self.programs is None:
            raise DataplaneError("dataplane opened read-only: use Dataplane.load() to attach")
        kinds = layout.DEV_F_LAN | layout.DEV_F_PEER_NETNS
        with nullcontext(ipr) if ipr is not None else ipr_in(netns) as ipr:
            idx = link_index(ipr, ifname)
            old = self.tables.device(idx)
            flags = old.flags & ~kinds if old is not None else 0
            if lan:
                flags |= layout.DEV_F_LAN
                if veth_peer_elsewhere(ipr, idx):
                    flags |= layout.DEV_F_PEER_NETNS
            l3 = l3_offset(ipr, idx)
            # The device entry comes first: the programs ignore unknown devices.
            self.tables.set_device(idx, l3, mss4, mss6, flags)
            if attach(ipr, idx, self.programs, hooks):
                self.tables.set_device(idx, l3, mss4, mss6, flags | layout.DEV_F_OWN_QDISC)
        dev = self.tables.device(idx)
        return DeviceInfo(idx, dev.l3_offset, dev.mss_v4, dev.mss_v6,
                          bool(dev.flags & layout.DEV_F_OWN_QDISC))

    def detach(self, ifname: str, netns: str | None = None) -> None:
        """Stop translating on a device and forget its mappings (idempotent)."""
        with ipr_in(netns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                return
            dev = self.tables.device(idx[0])
            own = bool(dev and dev.flags & layout.DEV_F_OWN_QDISC)
            detach(ipr, idx[0], remove_qdisc=own)
            self.tables.remove_device(idx[0])

    def forget_device(self, ifindex: int) -> None:
        """Drop the entries of a device that no longer exists."""
        self.tables.remove_device(ifindex)

    def set_mappings(self, ifname: str, mappings: list[Mapping],
                     netns: str | None = None) -> None:
        self.tables.set_mappings(self.ifindex(ifname, netns), mappings)

    def add_mapping(self, ifname: str, mapping: Mapping,
                    netns: str | None = None) -> InstalledMapping:
        return self.tables.add_mapping(self.ifindex(ifname, netns), mapping)

    def remove_mapping(self, ifname: str, mapping: Mapping, netns: str | None = None) -> bool:
        return self.tables.remove_mapping(self.ifindex(ifname, netns), mapping)

    def mappings(self, ifindex: int | None = None) -> list[InstalledMapping]:
        return self.tables.mappings(ifindex)

    def counters(self) -> dict[InstalledMapping, dict[str, Counter]]:
        return {m: self.tables.counters(m.mapping_id) for m in self.tables.mappings()}

    def destroy(self) -> None:
        """Unpin every program and map of the gateway (detach devices first)."""
        self.close()
        shutil.rmtree(self.pin_dir, ignore_errors=True)
