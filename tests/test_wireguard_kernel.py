"""Kernel engine without the kernel module: pyroute2 calls and replies, faked.

The fakes encode and decode real pyroute2 `wgmsg` messages, so what the engine
sends must be acceptable to pyroute2 and what it parses is what pyroute2 yields.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from natgw.keys import public_key
from natgw.wireguard.engines import kernel_module_available, select_engine
from natgw.wireguard.kernel import MODULE_MISSING, KernelEngine, parse_info, set_calls
from natgw.wireguard.model import DeviceConfig, PeerConfig, WireGuardError
from natgw.wireguard.plan import Plan
from natgw.wireguard.userspace import WireGuardGoEngine

PRIV = bytes(range(1, 33))
K1, K2, K3 = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# --- DeviceConfig differences -> WireGuard.set calls ----------------------------------

SET_CALLS = [
    ("nothing to do", Plan(), []),
    (
        "key and port in one device call",
        Plan(private_key=PRIV, listen_port=51820),
        [{"interface": "wg0", "private_key": b64(PRIV), "listen_port": 51820}],
    ),
    (
        "removal",
        Plan(remove=(K2,)),
        [{"interface": "wg0", "peer": {"public_key": b64(K2), "remove": True}}],
    ),
    (
        "peer with IPv6 endpoint, allowed-ips replaced",
        Plan(upsert=(PeerConfig(K1, "[2001:db8::1]:51820", nets("10.1.0.0/16", "fd00::/64"), 25),)),
        [
            {
                "interface": "wg0",
                "peer": {
                    "public_key": b64(K1),
                    "endpoint_addr": "2001:db8::1",
                    "endpoint_port": 51820,
                    "persistent_keepalive": 25,
                    "replace_allowed_ips": True,
                    "allowed_ips": ["10.1.0.0/16", "fd00::/64"],
                },
            }
        ],
    ),
    (
        "peer without endpoint: keepalive off, no endpoint attribute",
        Plan(upsert=(PeerConfig(K1, None, nets("10.1.0.0/16")),)),
        [
            {
                "interface": "wg0",
                "peer": {
                    "public_key": b64(K1),
                    "persistent_keepalive": 0,
                    "replace_allowed_ips": True,
                    "allowed_ips": ["10.1.0.0/16"],
                },
            }
        ],
    ),
]


@pytest.mark.parametrize("name, plan, expected", SET_CALLS, ids=[c[0] for c in SET_CALLS])
def test_set_calls(name: str, plan: Plan, expected: list[dict[str, Any]]) -> None:
    assert set_calls("wg0", plan) == expected


def encode_set(call: dict[str, Any]) -> wgmsg:
    """The WG_CMD_SET_DEVICE message pyroute2's WireGuard.set builds, decoded again."""
    helper = object.__new__(AsyncWireGuard)  # only its message-building methods are used
    msg = wgmsg()
    msg["cmd"], msg["version"] = 1, 1
    msg["attrs"].append(["WGDEVICE_A_IFNAME", call["interface"]])
    if "private_key" in call:
        helper._wg_test_key(call["private_key"])
        msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", call["private_key"]])
    if "listen_port" in call:
        msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", call["listen_port"]])
    if "peer" in call:
        helper._wg_set_peer(msg, call["peer"])
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def test_pyroute2_encodes_our_peer_call_as_the_kernel_expects() -> None:
    plan = Plan(
        upsert=(PeerConfig(K1, "[2001:db8::1]:51820", nets("10.1.0.0/16", "fd00::/64"), 25),)
    )
    (call,) = set_calls("wg0", plan)
    (peer,) = encode_set(call).get_attr("WGDEVICE_A_PEERS")
    assert base64.b64decode(peer.get_attr("WGPEER_A_PUBLIC_KEY")) == K1
    assert peer.get_attr("WGPEER_A_FLAGS") == 0x2  # WGPEER_F_REPLACE_ALLOWEDIPS, nothing else
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"], endpoint["port"]) == (
        socket.AF_INET6,
        "2001:db8::1",
        51820,
    )
    assert peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert [a.get("addr") for a in peer.get_attr("WGPEER_A_ALLOWEDIPS")] == [
        "10.1.0.0/16",
        "fd00::/64",
    ]


def test_pyroute2_encodes_removal_and_device_fields() -> None:
    calls = set_calls("wg0", Plan(private_key=PRIV, listen_port=7, remove=(K2,)))
    device, removal = (encode_set(c) for c in calls)
    assert base64.b64decode(device.get_attr("WGDEVICE_A_PRIVATE_KEY")) == PRIV
    assert device.get_attr("WGDEVICE_A_LISTEN_PORT") == 7
    (peer,) = removal.get_attr("WGDEVICE_A_PEERS")
    assert peer.get_attr("WGPEER_A_FLAGS") == 0x1  # WGPEER_F_REMOVE_ME


# --- WireGuard.info replies -> DeviceState ------------------------------------------


def allowed(cidr: str) -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", family],
            ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
            ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen],
        ]
    }


def peer_attrs(
    key: bytes,
    cidrs: list[str],
    endpoint: tuple[str, int] | None = None,
    handshake: int = 0,
    rx: int = 0,
    tx: int = 0,
    keepalive: int = 0,
    fragment: bool = False,
) -> dict[str, Any]:
    """A peer as the kernel dumps it; `fragment`: the continuation of a cut peer."""
    attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", b64(key)]]
    if not fragment:
        if endpoint is not None:
            attrs.append(["WGPEER_A_ENDPOINT", {"addr": endpoint[0], "port": endpoint[1]}])
        attrs += [
            ["WGPEER_A_PRESHARED_KEY", b64(bytes(32))],
            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", keepalive],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": handshake, "tv_nsec": 0}],
            ["WGPEER_A_RX_BYTES", rx],
            ["WGPEER_A_TX_BYTES", tx],
            ["WGPEER_A_PROTOCOL_VERSION", 1],
        ]
    attrs.append(["WGPEER_A_ALLOWEDIPS", [allowed(c) for c in cidrs]])
    return {"attrs": attrs}


def kernel_reply(private_key: bytes | None, port: int, peers: list[dict[str, Any]]) -> wgmsg:
    """One WG_CMD_GET_DEVICE reply message, through pyroute2's encoder and decoder."""
    msg = wgmsg()
    msg["cmd"], msg["version"] = 0, 1
    msg["attrs"] = [["WGDEVICE_A_IFINDEX", 7], ["WGDEVICE_A_IFNAME", "wg0"]]
    if private_key is not None:
        msg["attrs"] += [
            ["WGDEVICE_A_PRIVATE_KEY", b64(private_key)],
            ["WGDEVICE_A_PUBLIC_KEY", b64(public_key(private_key))],
        ]
    msg["attrs"] += [["WGDEVICE_A_LISTEN_PORT", port], ["WGDEVICE_A_FWMARK", 0]]
    if peers:
        msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def test_parse_info_single_message() -> None:
    reply = kernel_reply(
        PRIV,
        51820,
        [
            peer_attrs(K1, ["10.1.0.0/16"], ("2001:db8::2", 51820), 1700000000, 10, 20, 25),
            peer_attrs(K2, []),
        ],
    )
    state, pub = parse_info([reply])
    assert pub == public_key(PRIV)
    assert state.private_key == PRIV and state.listen_port == 51820
    p1, p2 = state.peers
    assert (p1.public_key, p1.endpoint, p1.allowed_ips) == (
        K1,
        "[2001:db8::2]:51820",
        nets("10.1.0.0/16"),
    )
    assert (p1.latest_handshake, p1.rx_bytes, p1.tx_bytes, p1.persistent_keepalive) == (
        1700000000,
        10,
        20,
        25,
    )
    assert (p2.endpoint, p2.allowed_ips, p2.latest_handshake, p2.persistent_keepalive) == (
        None,
        (),
        0,
        None,
    )


def test_parse_info_joins_a_peer_cut_across_messages() -> None:
    first = kernel_reply(PRIV, 1, [peer_attrs(K1, ["10.1.0.0/16"], ("192.0.2.2", 9), 5)])
    rest = kernel_reply(
        PRIV, 1, [peer_attrs(K1, ["10.2.0.0/16"], fragment=True), peer_attrs(K2, ["10.3.0.0/16"])]
    )
    state, _ = parse_info([first, rest])
    assert [(p.public_key, p.allowed_ips) for p in state.peers] == [
        (K1, nets("10.1.0.0/16", "10.2.0.0/16")),
        (K2, nets("10.3.0.0/16")),
    ]
    assert state.peers[0].endpoint == "192.0.2.2:9" and state.peers[0].latest_handshake == 5


def test_parse_info_of_fresh_device() -> None:
    state, pub = parse_info([kernel_reply(None, 0, [])])
    assert (state.private_key, state.listen_port, state.peers, pub) == (None, 0, (), None)


# --- the engine against fake sockets ----------------------------------------------------


class FakeWireGuard:
    """Holds one device's WireGuard state; applies `set` like the kernel does."""

    def __init__(self, devices: set[str]) -> None:
        self.devices = devices
        self.private_key: bytes | None = None
        self.port = 0
        self.peers: dict[bytes, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> FakeWireGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def info(self, interface: str) -> list[wgmsg]:
        if interface not in self.devices:
            raise NetlinkError(errno.ENODEV, "No such device")
        peers = [
            peer_attrs(k, p["allowed_ips"], p.get("endpoint"), p["handshake"], 0, 0, p["ka"])
            for k, p in self.peers.items()
        ]
        return [kernel_reply(self.private_key, self.port, peers)]

    def set(self, interface: str, **call: Any) -> None:
        encode_set({"interface": interface, **call})  # pyroute2 must accept it
        self.calls.append({"interface": interface, **call})
        if "private_key" in call:
            self.private_key = base64.b64decode(call["private_key"])
        self.port = call.get("listen_port", self.port)
        peer = call.get("peer")
        if peer is None:
            return
        key = base64.b64decode(peer["public_key"])
        if peer.get("remove"):
            self.peers.pop(key, None)
            return
        entry = self.peers.setdefault(key, {"allowed_ips": [], "handshake": 0, "ka": 0})
        if "endpoint_addr" in peer:
            entry["endpoint"] = (peer["endpoint_addr"], peer["endpoint_port"])
        entry["ka"] = peer.get("persistent_keepalive", entry["ka"])
        if peer.get("replace_allowed_ips"):
            entry["allowed_ips"] = []
        entry["allowed_ips"] += peer.get("allowed_ips", [])


class FakeLink(dict):
    def get(self, key: Any, default: Any = None) -> Any:
        if key == ("linkinfo", "kind"):
            return self["kind"]
        return super().get(key, default)


class FakeIPRoute:
    def __init__(self, links: dict[str, str | None], add_error: int | None = None) -> None:
        self.links = links  # ifname -> kind
        self.add_error = add_error

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _names(self) -> list[str]:
        return list(self.links)

    def link_lookup(self, ifname: str) -> list[int]:
        return [self._names().index(ifname) + 1] if ifname in self.links else []

    def get_links(self, index: int) -> list[FakeLink]:
        return [FakeLink(kind=self.links[self._names()[index - 1]])]

    def link(self, command: str, **kw: Any) -> None:
        if command == "add":
            if self.add_error is not None:
                raise NetlinkError(self.add_error, "error")
            self.links[kw["ifname"]] = kw["kind"]
        elif command == "del":
            del self.links[self._names()[kw["index"] - 1]]


def fake_engine(
    links: dict[str, str | None] | None = None, add_error: int | None = None
) -> tuple[KernelEngine, FakeIPRoute, FakeWireGuard]:
    ipr = FakeIPRoute({"lo": None} if links is None else links, add_error)
    wg = FakeWireGuard({n for n, k in ipr.links.items() if k == "wireguard"})

    def open_ipr(netns: str | None) -> FakeIPRoute:
        wg.devices = {n for n, k in ipr.links.items() if k == "wireguard"}
        return ipr

    return KernelEngine(iproute=open_ipr, wireguard=lambda netns: wg), ipr, wg


CFG = DeviceConfig(
    PRIV,
    51820,
    (
        PeerConfig(K1, "192.0.2.2:51820", nets("10.1.0.0/16"), 25),
        PeerConfig(K2, None, nets("10.2.0.0/16")),
    ),
)


def test_kernel_engine_lifecycle() -> None:
    engine, ipr, wg = fake_engine()
    engine.ensure_device("wg0", None)
    engine.ensure_device("wg0", None)  # idempotent
    assert ipr.links["wg0"] == "wireguard" and engine.is_alive("wg0", None)

    engine.configure("wg0", None, CFG)
    assert len(wg.calls) == 3  # device fields + two peers
    wg.calls.clear()
    engine.configure("wg0", None, CFG)
    assert wg.calls == []  # same config: nothing written, sessions untouched

    changed = DeviceConfig(PRIV, 51820, (CFG.peers[0], PeerConfig(K3, None, nets("10.3.0.0/16"))))
    engine.configure("wg0", None, changed)
    assert [c["peer"]["public_key"] for c in wg.calls] == [b64(K2), b64(K3)]
    assert wg.calls[0]["peer"]["remove"] is True

    status = engine.status("wg0", None)
    assert (status.engine, status.pid, status.public_key) == ("kernel", None, public_key(PRIV))
    assert {p.public_key for p in status.peers} == {K1, K3}

    engine.delete("wg0", None)
    engine.delete("wg0", None)  # idempotent
    assert "wg0" not in ipr.links and not engine.is_alive("wg0", None)


def test_kernel_engine_refuses_to_take_over_another_link() -> None:
    engine, ipr, _ = fake_engine({"lo": None, "wg0": "veth"})
    with pytest.raises(WireGuardError, match="a veth link of that name exists"):
        engine.ensure_device("wg0", None)
    engine.delete("wg0", None)
    assert ipr.links["wg0"] == "veth"


def test_kernel_engine_reports_missing_module_on_link_add() -> None:
    engine, _, _ = fake_engine(add_error=errno.EOPNOTSUPP)
    with pytest.raises(WireGuardError) as info:
        engine.ensure_device("wg0", None)
    assert str(info.value) == MODULE_MISSING


def test_kernel_engine_configure_missing_device() -> None:
    engine, _, _ = fake_engine()
    with pytest.raises(WireGuardError, match="kernel wg0: no such WireGuard device"):
        engine.configure("wg0", None, CFG)


def test_kernel_engine_missing_netns_is_a_wireguard_error() -> None:
    with pytest.raises(WireGuardError, match="does not exist"):
        KernelEngine().ensure_device("wg0", "natgw-no-such-netns")


# --- engine selection ---------------------------------------------------------------


def test_select_engine_table() -> None:
    yes, no = (lambda: True), (lambda: False)
    has_go, no_go = (lambda _: "/usr/bin/wireguard-go"), (lambda _: None)
    assert isinstance(select_engine("auto", kernel_available=yes, which=no_go), KernelEngine)
    assert isinstance(select_engine("auto", kernel_available=no, which=has_go), WireGuardGoEngine)
    assert isinstance(select_engine("kernel", kernel_available=yes), KernelEngine)
    assert isinstance(
        select_engine("wireguard-go", kernel_available=yes, which=has_go), WireGuardGoEngine
    )
    errors = [
        (("kernel", no, has_go), MODULE_MISSING),
        (("wireguard-go", yes, no_go), "engine wireguard-go: wireguard-go not found on PATH"),
        (
            ("auto", no, no_go),
            "engine auto: no WireGuard kernel module and no wireguard-go on PATH",
        ),
        (
            ("userspace", yes, has_go),
            "engine 'userspace': expected one of auto, kernel, wireguard-go",
        ),
    ]
    for (name, available, which), message in errors:
        with pytest.raises(WireGuardError) as info:
            select_engine(name, kernel_available=available, which=which)
        assert str(info.value) == message


def test_this_machine_has_no_module_so_auto_is_wireguard_go() -> None:
    if Path("/sys/module/wireguard").exists():
        pytest.skip("this machine has the WireGuard kernel module")
    with pytest.raises(WireGuardError) as info:
        select_engine("kernel")
    assert str(info.value) == (
        "engine kernel: WireGuard kernel module not available (try engine: wireguard-go)"
    )
    assert select_engine("auto").name == "wireguard-go"


def test_kernel_module_available(tmp_path: Path) -> None:
    loads: list[int] = []
    assert not kernel_module_available(tmp_path, load=None)
    assert not kernel_module_available(tmp_path, load=lambda: loads.append(1))
    assert loads == [1]
    # modprobe succeeded: the module appears in /sys/module
    assert kernel_module_available(tmp_path, load=lambda: (tmp_path / "wireguard").mkdir())
    assert kernel_module_available(tmp_path, load=None)
