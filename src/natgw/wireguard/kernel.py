"""The kernel engine: WireGuard links driven through pyroute2.

Links are created with rtnetlink (`IPRoute.link("add", kind="wireguard")`), keys
and peers set through WireGuard's generic netlink family (`pyroute2.WireGuard`).
Both sockets are opened inside the target netns by pyroute2 (netns=...), so
natgw itself stays in its own namespaces. pyroute2 takes one peer per `set`
call and keys in base64; `set_calls` is the pure translation, tested without
the module.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from pyroute2 import WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from natgw import netns as ns
from natgw.wireguard.model import (
    DeviceConfig,
    DeviceState,
    DeviceStatus,
    PeerStatus,
    WireGuardError,
    check_ifname,
)
from natgw.wireguard.plan import Plan, plan_changes

log = logging.getLogger(__name__)

MODULE_MISSING = "engine kernel: WireGuard kernel module not available (try engine: wireguard-go)"


def open_wireguard(netns: str | None) -> WireGuard:
    """A WireGuard generic-netlink socket in `netns`; never creates a missing netns."""
    ns.require_netns(netns)
    try:
        return WireGuard() if netns is None else WireGuard(netns=netns, flags=0)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:  # generic netlink family "wireguard" unknown
            raise WireGuardError(MODULE_MISSING) from None
        raise


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def set_calls(ifname: str, plan: Plan) -> list[dict[str, Any]]:
    """Keyword arguments of the `WireGuard.set` calls that apply `plan`, in order."""
    calls: list[dict[str, Any]] = []
    device: dict[str, Any] = {}
    if plan.private_key is not None:
        device["private_key"] = _b64(plan.private_key)
    if plan.listen_port is not None:
        device["listen_port"] = plan.listen_port
    if device:
        calls.append({"interface": ifname, **device})
    for key in plan.remove:
        calls.append({"interface": ifname, "peer": {"public_key": _b64(key), "remove": True}})
    for p in plan.upsert:
        peer: dict[str, Any] = {
            "public_key": _b64(p.public_key),
            "persistent_keepalive": p.persistent_keepalive or 0,
            "replace_allowed_ips": True,
            "allowed_ips": [str(net) for net in p.allowed_ips],
        }
        if p.endpoint is not None:
            peer["endpoint_addr"], peer["endpoint_port"] = _split_endpoint(p.endpoint)
        calls.append({"interface": ifname, "peer": peer})
    return calls


def _endpoint_text(ep: Any) -> str | None:
    if not ep or not ep.get("addr"):
        return None
    addr = ipaddress.ip_address(ep["addr"])
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{host}:{ep['port']}"


def parse_info(messages: Iterable[Any]) -> tuple[DeviceState, bytes | None]:
    """Device state and public key from the messages of a `WireGuard.info` dump.

    A dump with many peers or allowed-ips spans several messages; a peer cut in
    two is repeated with its public key and the rest of its allowed-ips.
    """
    private_key: bytes | None = None
    pub: bytes | None = None
    listen_port = 0
    peers: dict[bytes, dict[str, Any]] = {}
    for msg in messages:
        if msg.get_attr("WGDEVICE_A_PRIVATE_KEY"):
            private_key = base64.b64decode(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
        if msg.get_attr("WGDEVICE_A_PUBLIC_KEY"):
            pub = base64.b64decode(msg.get_attr("WGDEVICE_A_PUBLIC_KEY"))
        if msg.get_attr("WGDEVICE_A_LISTEN_PORT") is not None:
            listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT")
        for p in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = base64.b64decode(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            entry = peers.setdefault(key, {"allowed_ips": []})
            entry["allowed_ips"] += [
                ipaddress.ip_network(a.get("addr"), strict=False)
                for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or ()
            ]
            for attr, name in _PEER_ATTRS:
                value = p.get_attr(attr)
                if value is not None:
                    entry[name] = value
    statuses = tuple(
        PeerStatus(
            public_key=key,
            endpoint=_endpoint_text(e.get("endpoint")),
            allowed_ips=tuple(e["allowed_ips"]),
            latest_handshake=(e.get("handshake") or {}).get("tv_sec", 0),
            rx_bytes=e.get("rx", 0),
            tx_bytes=e.get("tx", 0),
            persistent_keepalive=e.get("keepalive") or None,
        )
        for key, e in peers.items()
    )
    return DeviceState(private_key, listen_port, statuses), pub


_PEER_ATTRS = (
    ("WGPEER_A_ENDPOINT", "endpoint"),
    ("WGPEER_A_LAST_HANDSHAKE_TIME", "handshake"),
    ("WGPEER_A_RX_BYTES", "rx"),
    ("WGPEER_A_TX_BYTES", "tx"),
    ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "keepalive"),
)


def _link(ipr: Any, ifname: str) -> tuple[int, str] | None:
    """(index, kind) of link `ifname`, kind "" for links without one; None if absent."""
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return None
    return indexes[0], ipr.get_links(indexes[0])[0].get(("linkinfo", "kind")) or ""


class KernelEngine:
    """Engine for hosts with the WireGuard kernel module (no process to supervise)."""

    name = "kernel"

    def __init__(
        self,
        iproute: Callable[[str | None], Any] = ns.iproute,
        wireguard: Callable[[str | None], Any] = open_wireguard,
    ) -> None:
        # Socket factories, injectable so tests can run without the module.
        self._iproute = iproute
        self._wireguard = wireguard

    def _fail(self, ifname: str, what: str, exc: NetlinkError) -> WireGuardError:
        return WireGuardError(f"kernel {ifname}: {what}: {os.strerror(exc.code)}")

    def _open(self, factory: Callable[[str | None], Any], netns: str | None) -> Any:
        try:
            return factory(netns)
        except ns.NetnsNotFound as exc:
            raise WireGuardError(str(exc)) from None

    def _read(self, wg: Any, ifname: str) -> tuple[DeviceState, bytes | None]:
        try:
            return parse_info(list(wg.info(ifname)))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise WireGuardError(f"kernel {ifname}: no such WireGuard device") from None
            raise self._fail(ifname, "reading device", exc) from None

    def ensure_device(self, ifname: str, netns: str | None) -> None:
        check_ifname(ifname)
        with self._open(self._iproute, netns) as ipr:
            link = _link(ipr, ifname)
            if link is not None and link[1] == "wireguard":
                return
            if link is not None:
                where = netns or "natgw's own netns"
                raise WireGuardError(
                    f"kernel {ifname}: a {link[1] or 'non-wireguard'} link of "
                    f"that name exists in {where}"
                )
            try:
                ipr.link("add", ifname=ifname, kind="wireguard")
            except NetlinkError as exc:
                if exc.code == errno.EOPNOTSUPP:
                    raise WireGuardError(MODULE_MISSING) from None
                raise self._fail(ifname, "creating link", exc) from None
        log.info("kernel %s: created in %s", ifname, netns or "own netns")

    def configure(self, ifname: str, netns: str | None, cfg: DeviceConfig) -> None:
        check_ifname(ifname)
        with self._open(self._wireguard, netns) as wg:
            state, _ = self._read(wg, ifname)
            plan = plan_changes(state, cfg)
            for call in set_calls(ifname, plan):
                try:
                    wg.set(**call)
                except NetlinkError as exc:
                    raise self._fail(ifname, "setting keys/peers", exc) from None
        if not plan.is_empty():
            log.info("kernel %s: -%d +/~%d peers", ifname, len(plan.remove), len(plan.upsert))

    def apply_plan(self, ifname: str, netns: str | None, plan: Plan) -> None:
        """Write a difference the caller already knows (no read-back of the device)."""
        check_ifname(ifname)
        with self._open(self._wireguard, netns) as wg:
            for call in set_calls(ifname, plan):
                try:
                    wg.set(**call)
                except NetlinkError as exc:
                    raise self._fail(ifname, "setting keys/peers", exc) from None

    def status(self, ifname: str, netns: str | None, timeout: float | None = None
               ) -> DeviceStatus:
        # Netlink answers from the kernel's own state: it does not stall, no timeout.
        with self._open(self._wireguard, netns) as wg:
            state, pub = self._read(wg, ifname)
        return DeviceStatus(
            ifname=ifname,
            engine="kernel",
            public_key=pub,
            listen_port=state.listen_port,
            peers=state.peers,
            pid=None,
        )

    def is_alive(self, ifname: str, netns: str | None) -> bool:
        try:
            with self._open(self._iproute, netns) as ipr:
                link = _link(ipr, ifname)
        except WireGuardError:
            return False
        return link is not None and link[1] == "wireguard"

    def delete(self, ifname: str, netns: str | None) -> None:
        if netns is not None and not ns.netns_exists(netns):
            return  # the link went with its netns
        with self._open(self._iproute, netns) as ipr:
            link = _link(ipr, ifname)
            if link is None:
                return
            if link[1] != "wireguard":
                log.warning("kernel %s: left alone, it is a %s link", ifname, link[1] or "plain")
                return
            try:
                ipr.link("del", index=link[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise self._fail(ifname, "deleting link", exc) from None
        log.info("kernel %s: deleted from %s", ifname, netns or "own netns")
