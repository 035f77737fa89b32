"""config.py: each case is a cluster.yaml (as a dict) and the one error it must produce."""

# ruff: noqa: E501 - the error table keeps one case per line, like a fixture table.

import base64
import os
import pickle
import shutil
import traceback
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml

from natgw import keys
from natgw.config import (
    ConfigError,
    HostPort,
    default_device_name,
    load_config,
    parse_config,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _key(seed: int) -> str:
    return keys.encode_key(keys.clamp(bytes([seed]) * 32))


OWN_PRIVATE = _key(1)
OWN_PUBLIC = keys.pubkey(OWN_PRIVATE)
PUB_A, PUB_B, PUB_C = (keys.pubkey(_key(s)) for s in (2, 3, 4))


def m(cidr: str, as_: str | None = None) -> dict[str, str]:
    return {"cidr": cidr} if as_ is None else {"cidr": cidr, "as": as_}


def tunnel(name: str, key: str, *remote: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A WireGuard peer that we reach at an endpoint."""
    peer = {"name": name, "publicKey": key, "endpoint": "192.0.2.1:51820"}
    return peer | {"remote": list(remote), **extra}


def link(name: str, interface: str, *remote: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "interface": interface, "remote": list(remote), **extra}


def cfg(*peers: dict[str, Any], **top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "c1", "cidrs": ["10.244.0.0/16"], "privateKey": OWN_PRIVATE}
    return base | {"peers": list(peers)} | top


def error_of(data: dict[str, Any], base_dir: Path = Path(".")) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, base_dir)
    assert str(e.value) == f"{e.value.path}: {e.value.reason}"
    return str(e.value)


def test_config_error_format_and_pickle() -> None:
    e = pickle.loads(pickle.dumps(ConfigError("peers[1].remote[0].as", "bad")))
    assert (str(e), e.path, e.reason) == (
        "peers[1].remote[0].as: bad",
        "peers[1].remote[0].as",
        "bad",
    )


# --- a good file and its accessors ---


def full_config(key_file: Path) -> dict[str, Any]:
    return {
        "name": "cluster1",
        "cidrs": ["10.244.0.0/16", "fd00:244::/64"],
        "privateKeyFile": key_file.name,
        "engine": "wireguard-go",
        "mtu": 1380,
        "metrics": "[::1]:9100",
        "peers": [
            {
                "name": "cluster2",
                "publicKey": PUB_A,
                "endpoint": "192.0.2.2:51820",
                "listenPort": 51820,
                "persistentKeepalive": 25,
                "remote": [
                    m("10.244.0.0/16", "10.245.0.0/16"),
                    m("fd00:244::/64", "fd00:245::/64"),
                ],
                "local": [m("10.244.0.0/16", "10.246.0.0/16")],
            },
            {"name": "c3", "publicKey": PUB_B, "endpoint": "[2001:db8::3]:51821"}
            | {"remote": [m("172.16.0.0/24")], "device": "wg-c3"},
            link("lab", "eth1", m("10.244.0.0/16", "10.247.0.0/16"), via="192.0.2.9"),
        ],
    }


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster1.key"
    path.write_text(OWN_PRIVATE + "\n")
    path.chmod(0o600)
    return path


def test_full_config_accessors(key_file: Path) -> None:
    c = parse_config(full_config(key_file), key_file.parent)
    assert c.private_key is not None
    assert c.private_key.get_secret_value() == base64.b64decode(OWN_PRIVATE)
    assert c.private_key_file == key_file
    assert c.public_key == OWN_PUBLIC
    assert c.cidrs == [ip_network("10.244.0.0/16"), ip_network("fd00:244::/64")]
    assert (c.engine, c.mtu, c.metrics) == ("wireguard-go", 1380, HostPort("::1", 9100))
    assert str(c.metrics) == "[::1]:9100"

    p, p3, lab = c.peers
    assert p.is_tunnel and not lab.is_tunnel
    assert [x.name for x in c.tunnel_peers] == ["cluster2", "c3"]
    assert [x.name for x in c.interface_peers] == ["lab"]
    assert p.endpoint == HostPort("192.0.2.2", 51820)
    assert str(p3.endpoint) == "[2001:db8::3]:51821"
    assert (p.listen_port, p.persistent_keepalive, p3.listen_port) == (51820, 25, None)
    assert p.allowed_ips == [ip_network("10.244.0.0/16"), ip_network("fd00:244::/64")]
    assert p.routed_networks == [ip_network("10.245.0.0/16"), ip_network("fd00:245::/64")]
    assert p3.routed_networks == [ip_network("172.16.0.0/24")]
    assert p.remote[0].remapped and not p3.remote[0].remapped
    assert (p.local[0].cidr, p.local[0].as_) == (
        ip_network("10.244.0.0/16"),
        ip_network("10.246.0.0/16"),
    )
    assert lab.via == ip_address("192.0.2.9")
    assert [x.device for x in c.peers] == ["c1-cluster2", "wg-c3", "eth1"]
    assert c.device_for("lab") == "eth1" and c.device_for(p3) == "wg-c3"
    assert c.peer("c3") is p3


def test_defaults() -> None:
    c = parse_config({"name": "gw", "cidrs": ["10.0.0.0/8"]}, Path("."))
    assert (c.engine, c.mtu, str(c.metrics), c.peers) == ("auto", 1420, "127.0.0.1:9000", [])
    assert (c.fastpath, c.fast, c.lan_devices) == ("auto", True, None)
    assert c.private_key is None and c.public_key is None


@pytest.mark.parametrize(("fastpath", "fast", "xdp"), [
    ("auto", True, False), ("tc", True, False), ("xdp", True, True), ("off", False, False)])
def test_fastpath(fastpath: str, fast: bool, xdp: bool) -> None:
    """xdp runs the tc fast path too: it gets every packet XDP passes."""
    c = parse_config(cfg(fastpath=fastpath, lanDevices=["eth0"]), Path("."))
    assert (c.fast, c.xdp, c.lan_devices) == (fast, xdp, ["eth0"])


def test_key_not_required_without_wireguard_peers() -> None:
    data = cfg(link("lab", "eth1", m("10.1.0.0/16")))
    del data["privateKey"]
    assert parse_config(data, Path(".")).peers[0].device == "eth1"


@pytest.mark.parametrize(
    ("gateway", "peer", "device"),
    [
        ("c1", "c2", "c1-c2"),
        ("cluster1", "east12", "cluster1-east12"),  # exactly 15
        # Too long: the gateway's initial and trailing digits, then the whole peer name.
        ("cluster1", "cluster2", "c1-cluster2"),
        ("cluster12", "cluster13", "c12-cluster13"),
        ("kubernetes-prod", "db", "k-db"),
        # A peer name too long even so: cut, with 3 hex of sha1("gateway/peer").
        ("cluster1", "aws-eu-west-1-prod", "c1-aws-eu-w-c57"),
        ("42", "a-long-peer-name", "42-a-long-p-3ef"),
    ],
)
def test_default_device_name(gateway: str, peer: str, device: str) -> None:
    assert default_device_name(gateway, peer) == device
    assert len(device) <= 15


def test_cut_default_names_stay_apart() -> None:
    a = default_device_name("cluster1", "aws-eu-west-1-prod")
    b = default_device_name("cluster1", "aws-eu-west-1-test")
    assert a != b and a[:12] == b[:12]


def test_load_config_example_files(tmp_path: Path) -> None:
    # The examples ship without their private keys: give each a fresh one.
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files
    for src in files:
        dst = tmp_path / src.name
        shutil.copy(src, dst)
        data = yaml.safe_load(src.read_text())
        if "privateKeyFile" in data:
            key = tmp_path / data["privateKeyFile"]
            key.write_text(keys.genkey() + "\n")
            key.chmod(0o600)
        c = load_config(dst)
        assert c.name == data["name"]


def test_private_key_file_is_relative_to_yaml_dir(tmp_path: Path, key_file: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(full_config(key_file)))
    cwd = os.getcwd()
    os.chdir("/")
    try:
        c = load_config(tmp_path / "cluster.yaml")
    finally:
        os.chdir(cwd)
    assert c.private_key_file == key_file


# --- the private key never shows ---


def test_private_key_hidden_from_repr_str_and_json(key_file: Path) -> None:
    for data in (full_config(key_file), cfg(tunnel("c2", PUB_A, m("10.1.0.0/16")))):
        c = parse_config(data, key_file.parent)
        raw = base64.b64decode(OWN_PRIVATE)
        for text in (repr(c), str(c), c.model_dump_json(), repr(c.model_dump())):
            assert OWN_PRIVATE not in text and repr(raw) not in text and raw.hex() not in text


def test_private_key_hidden_from_errors_and_tracebacks() -> None:
    # 44 characters, valid base64 alphabet, but non-canonical: rejected by decode_key.
    secret = OWN_PRIVATE[:42] + "B="
    with pytest.raises(ConfigError) as e:
        parse_config(cfg(privateKey=secret), Path("."))
    assert (
        str(e.value)
        == "privateKey: not a WireGuard key: non-canonical base64 (unused bits are set)"
    )
    shown = "".join(traceback.format_exception(e.value))
    assert secret not in shown and "ValidationError" not in shown


# --- errors: (case id, config, exact message) ---

PEER_A = tunnel("a", PUB_A, m("10.244.0.0/16", "10.245.0.0/16"))
# Two replicas of one remote cluster, dual stack.
MEMBER_A = tunnel("a", PUB_A, m("10.244.0.0/16", "10.245.0.0/16"), m("fd00:1::/64", "fd00:2::/64"),
                  group="g", persistentKeepalive=1)
MEMBER_B = MEMBER_A | {"name": "b", "publicKey": PUB_B, "endpoint": "192.0.2.2:51820"}

CASES: list[tuple[str, dict[str, Any], str]] = [
    # pydantic's own errors, translated
    ("missing name", {"cidrs": ["10.0.0.0/8"]}, "name: field required"),
    ("missing remote", cfg({"name": "a", "publicKey": PUB_A, "listenPort": 1}), "peers[0].remote: field required"),
    ("unknown top field", cfg(privatekey="x"), "privatekey: unknown field"),
    ("python name is unknown", cfg(private_key=OWN_PRIVATE), "private_key: unknown field"),
    ("unknown peer field", cfg(PEER_A | {"foo": 1}), "peers[0].foo: unknown field"),
    ("unknown mapping field", cfg(tunnel("a", PUB_A, {"cidr": "10.1.0.0/16", "ass": "10.2.0.0/16"})), "peers[0].remote[0].ass: unknown field"),
    ("wrong type", cfg(mtu="1420"), "mtu: expected an integer, got str"),
    ("bool is no int", cfg(mtu=True), "mtu: expected an integer, got bool"),
    ("mtu too small", cfg(mtu=1279), "mtu: 1279 is out of range 1280..65535"),
    ("mtu too big", cfg(mtu=65536), "mtu: 65536 is out of range 1280..65535"),
    ("listenPort 0", cfg(PEER_A | {"listenPort": 0}), "peers[0].listenPort: 0 is out of range 1..65535"),
    ("keepalive", cfg(PEER_A | {"persistentKeepalive": -1}), "peers[0].persistentKeepalive: -1 is out of range 0..65535"),
    ("engine", cfg(engine="userspace"), "engine: expected one of 'auto', 'kernel' or 'wireguard-go'"),
    ("cidrs not a list", cfg(cidrs="10.0.0.0/8"), "cidrs: expected a list"),
    ("peer not a mapping", cfg("a"), "peers[0]: expected a mapping"),
    ("name type", cfg(name=1), "name: expected a string, got int"),
    ("gateway name", cfg(name="-gw"), "name: invalid name '-gw': use letters, digits, '_', '.' and '-', starting with a letter or digit"),
    ("peer name", cfg(tunnel("a/b", PUB_A, m("10.1.0.0/16"))), "peers[0].name: invalid name 'a/b': use letters, digits, '_', '.' and '-', starting with a letter or digit"),
    # CIDRs
    ("bad cidr", cfg(cidrs=["10.244.0/16"]), "cidrs[0]: invalid CIDR 10.244.0/16"),
    ("host bits", cfg(tunnel("a", PUB_A, m("10.244.0.1/16", "10.245.0.0/16"))), "peers[0].remote[0].cidr: host bits set in 10.244.0.1/16 (the network is 10.244.0.0/16)"),
    ("host bits v6", cfg(cidrs=["fd00::1/64"]), "cidrs[0]: host bits set in fd00::1/64 (the network is fd00::/64)"),
    ("no prefix", cfg(tunnel("a", PUB_A, m("10.1.0.0", "10.2.0.0/32"))), "peers[0].remote[0].cidr: 10.1.0.0 has no prefix length (write 10.1.0.0/32)"),
    ("cidrs empty", cfg(cidrs=[]), "cidrs: must not be empty"),
    ("own cidrs overlap", cfg(cidrs=["10.0.0.0/8", "10.1.0.0/16"]), "cidrs[1]: 10.1.0.0/16 overlaps cidrs[0] 10.0.0.0/8"),
    # keys
    ("short key", cfg(tunnel("a", "abcdefg", m("10.1.0.0/16"))), "peers[0].publicKey: not a WireGuard key: expected 44 base64 characters, got 7"),
    ("31-byte key", cfg(tunnel("a", base64.b64encode(bytes(31)).decode(), m("10.1.0.0/16"))), "peers[0].publicKey: not a WireGuard key: decodes to 31 bytes, expected 32"),
    ("bad base64 key", cfg(tunnel("a", "*" * 43 + "=", m("10.1.0.0/16"))), "peers[0].publicKey: not a WireGuard key: invalid base64"),
    ("both private keys", cfg(privateKeyFile="k.key"), "privateKeyFile: privateKey and privateKeyFile are mutually exclusive"),
    ("no private key", {"name": "c1", "cidrs": ["10.244.0.0/16"], "peers": [PEER_A]}, "privateKeyFile: required for WireGuard peers (or an inline privateKey)"),
    # endpoints and addresses
    ("endpoint no port", cfg(PEER_A | {"endpoint": "192.0.2.2"}), "peers[0].endpoint: expected host:port, got '192.0.2.2'"),
    ("endpoint port 0", cfg(PEER_A | {"endpoint": "192.0.2.2:0"}), "peers[0].endpoint: invalid port '0': expected 1..65535"),
    ("endpoint port text", cfg(PEER_A | {"endpoint": "gw.example:wg"}), "peers[0].endpoint: invalid port 'wg': expected 1..65535"),
    ("endpoint bare v6", cfg(PEER_A | {"endpoint": "2001:db8::2:51820"}), "peers[0].endpoint: write an IPv6 address in brackets: [address]:port, got '2001:db8::2:51820'"),
    ("endpoint v4 in brackets", cfg(PEER_A | {"endpoint": "[192.0.2.2]:51820"}), "peers[0].endpoint: 192.0.2.2 is not an IPv6 address"),
    ("endpoint bad ipv4", cfg(PEER_A | {"endpoint": "192.0.2.256:51820"}), "peers[0].endpoint: 192.0.2.256 is neither an IP address nor a hostname"),
    ("endpoint bad host", cfg(PEER_A | {"endpoint": "gw_1.example:51820"}), "peers[0].endpoint: gw_1.example is neither an IP address nor a hostname"),
    ("metrics no port", cfg(metrics="localhost"), "metrics: expected host:port, got 'localhost'"),
    ("bad via", cfg(link("lab", "eth1", m("10.1.0.0/16"), via="192.0.2.300")), "peers[0].via: invalid IP address 192.0.2.300"),
    # mappings
    ("prefix mismatch", cfg(tunnel("a", PUB_A, m("10.244.0.0/16", "10.245.0.0/24"))), "peers[0].remote[0].as: /24 does not match cidr 10.244.0.0/16"),
    ("family mismatch", cfg(tunnel("a", PUB_A, m("10.244.0.0/16", "fd00::/112"))), "peers[0].remote[0].as: IPv6 fd00::/112 does not match cidr 10.244.0.0/16"),
    ("local prefix mismatch", cfg(PEER_A | {"local": [m("10.244.0.0/16", "10.246.0.0/17")]}), "peers[0].local[0].as: /17 does not match cidr 10.244.0.0/16"),
    ("local needs as", cfg(PEER_A | {"local": [m("10.244.0.0/16")]}), "peers[0].local[0].as: field required"),
    ("remote empty", cfg(tunnel("a", PUB_A)), "peers[0].remote: must not be empty"),
    # tunnel and interface peers
    ("tunnel without key", cfg({"name": "a", "listenPort": 1, "remote": [m("10.1.0.0/16")]}), "peers[0].publicKey: field required (or set interface: for a peer without tunnel)"),
    ("nobody can connect", cfg(tunnel("a", PUB_A, m("10.1.0.0/16"), endpoint=None)), "peers[0].listenPort: required without an endpoint, so that the peer can reach us"),
    ("via on tunnel", cfg(PEER_A | {"via": "192.0.2.9"}), "peers[0].via: only for interface: peers; a WireGuard device needs no next hop"),
    ("interface with publicKey", cfg(link("lab", "eth1", m("10.1.0.0/16"), publicKey=PUB_A)), "peers[0].publicKey: not allowed with interface: (no tunnel)"),
    ("interface with endpoint", cfg(link("lab", "eth1", m("10.1.0.0/16"), endpoint="192.0.2.2:1")), "peers[0].endpoint: not allowed with interface: (no tunnel)"),
    ("interface with listenPort", cfg(link("lab", "eth1", m("10.1.0.0/16"), listenPort=1)), "peers[0].listenPort: not allowed with interface: (no tunnel)"),
    ("interface with keepalive", cfg(link("lab", "eth1", m("10.1.0.0/16"), persistentKeepalive=25)), "peers[0].persistentKeepalive: not allowed with interface: (no tunnel)"),
    ("interface with device", cfg(link("lab", "eth1", m("10.1.0.0/16"), device="x")), "peers[0].device: not allowed with interface: (it is the device)"),
    # duplicates
    ("duplicate names", cfg(PEER_A, tunnel("a", PUB_B, m("10.1.0.0/16"))), "peers[1].name: duplicate peer name (also peers[0])"),
    ("duplicate listenPort", cfg(PEER_A | {"listenPort": 5}, tunnel("b", PUB_B, m("10.1.0.0/16"), listenPort=5)), "peers[1].listenPort: 5 is also the listenPort of peers[0] (a)"),
    ("duplicate publicKey", cfg(PEER_A, tunnel("b", PUB_A, m("10.1.0.0/16"))), "peers[1].publicKey: same key as peers[0] (a)"),
    ("our own key", cfg(tunnel("a", OWN_PUBLIC, m("10.1.0.0/16"))), "peers[0].publicKey: is our own public key, not the peer's"),
    # device names
    ("device too long", cfg(PEER_A | {"device": "wg-a-very-long-1"}), "peers[0].device: wg-a-very-long-1 is longer than 15 characters (the Linux limit)"),
    ("interface too long", cfg(link("lab", "enp0s31f6.100012", m("10.1.0.0/16"))), "peers[0].interface: enp0s31f6.100012 is longer than 15 characters (the Linux limit)"),
    ("bad device name", cfg(PEER_A | {"device": "wg/a"}), "peers[0].device: invalid device name 'wg/a'"),
    ("device collides with default", cfg(PEER_A, tunnel("b", PUB_B, m("10.1.0.0/16"), device="c1-a")), "peers[1].device: device c1-a is also the device of peers[0] (a); device names must be unique on the whole host, since wireguard-go's UAPI sockets in /var/run/wireguard are shared by all network namespaces"),
    ("default collides with device", cfg(tunnel("b", PUB_B, m("10.1.0.0/16"), device="c1-a"), PEER_A), "peers[1].name: device c1-a is also the device of peers[0] (b); device names must be unique on the whole host, since wireguard-go's UAPI sockets in /var/run/wireguard are shared by all network namespaces; set device: to choose another"),
    ("interfaces collide", cfg(link("x", "eth1", m("10.1.0.0/16")), link("y", "eth1", m("10.2.0.0/16"))), "peers[1].interface: device eth1 is also the device of peers[0] (x); device names must be unique on the whole host, since wireguard-go's UAPI sockets in /var/run/wireguard are shared by all network namespaces"),
    # remote ranges
    ("as overlaps our cidrs", cfg(tunnel("a", PUB_A, m("10.244.0.0/16", "10.244.0.0/16"))), "peers[0].remote[0].as: 10.244.0.0/16 overlaps our cidrs[0] 10.244.0.0/16; routes would collide"),
    ("cidr without as overlaps ours", cfg(tunnel("a", PUB_A, m("10.244.128.0/24"))), "peers[0].remote[0].cidr: 10.244.128.0/24 overlaps our cidrs[0] 10.244.0.0/16; add an as: to remap it"),
    ("as overlap across peers", cfg(PEER_A, tunnel("b", PUB_B, m("10.244.0.0/16", "10.245.0.0/16"))), "peers[1].remote[0].as: 10.245.0.0/16 overlaps peers[0].remote[0].as 10.245.0.0/16; routes would collide"),
    ("as overlap within a peer", cfg(tunnel("a", PUB_A, m("10.1.0.0/16", "10.9.0.0/16"), m("10.2.0.0/24", "10.9.1.0/24"))), "peers[0].remote[1].as: 10.9.1.0/24 overlaps peers[0].remote[0].as 10.9.0.0/16; routes would collide"),
    ("cidr without as overlaps other peer", cfg(tunnel("a", PUB_A, m("10.1.0.0/16")), tunnel("b", PUB_B, m("10.1.0.0/16"))), "peers[1].remote[0].cidr: 10.1.0.0/16 overlaps peers[0].remote[0].cidr 10.1.0.0/16; add an as: to remap it"),
    ("cidr without as overlaps other as", cfg(PEER_A, tunnel("b", PUB_B, m("10.245.1.0/24"))), "peers[1].remote[0].cidr: 10.245.1.0/24 overlaps peers[0].remote[0].as 10.245.0.0/16; add an as: to remap it"),
    ("as overlaps other unmapped", cfg(tunnel("a", PUB_A, m("10.1.0.0/16")), tunnel("b", PUB_B, m("10.244.0.0/16", "10.1.0.0/16"))), "peers[1].remote[0].as: 10.1.0.0/16 overlaps peers[0].remote[0].cidr 10.1.0.0/16; routes would collide"),
    ("interface peer routes collide", cfg(PEER_A, link("lab", "eth1", m("10.244.0.0/16", "10.245.0.0/16"))), "peers[1].remote[0].as: 10.245.0.0/16 overlaps peers[0].remote[0].as 10.245.0.0/16; routes would collide"),
    ("real ranges overlap in one peer", cfg(tunnel("a", PUB_A, m("10.1.0.0/16", "10.8.0.0/16"), m("10.1.0.0/16", "10.9.0.0/16"))), "peers[0].remote[1].cidr: 10.1.0.0/16 overlaps peers[0].remote[0].cidr 10.1.0.0/16 of the same peer"),
    # local ranges
    ("local cidr outside ours", cfg(PEER_A | {"local": [m("10.250.0.0/16", "10.246.0.0/16")]}), "peers[0].local[0].cidr: 10.250.0.0/16 is not inside our cidrs"),
    ("local cidr other family", cfg(PEER_A | {"local": [m("fd00::/64", "fd01::/64")]}), "peers[0].local[0].cidr: fd00::/64 is not inside our cidrs"),
    ("local as overlaps ours", cfg(PEER_A | {"local": [m("10.244.0.0/16", "10.244.0.0/16")]}), "peers[0].local[0].as: 10.244.0.0/16 overlaps our cidrs[0] 10.244.0.0/16"),
    ("local as overlaps a routed range", cfg(PEER_A | {"local": [m("10.244.0.0/16", "10.245.0.0/16")]}), "peers[0].local[0].as: 10.245.0.0/16 overlaps peers[0].remote[0].as 10.245.0.0/16"),
    ("local as overlaps later peer's route", cfg(PEER_A | {"local": [m("10.244.0.0/16", "10.246.0.0/16")]}, tunnel("b", PUB_B, m("10.244.0.0/16", "10.246.0.0/16"))), "peers[0].local[0].as: 10.246.0.0/16 overlaps peers[1].remote[0].as 10.246.0.0/16"),
    ("local as is the peer's network", cfg(tunnel("a", PUB_A, m("10.9.0.0/16", "10.245.0.0/16"), local=[m("10.244.0.0/16", "10.9.0.0/16")])), "peers[0].local[0].as: 10.9.0.0/16 overlaps peers[0].remote[0].cidr 10.9.0.0/16, the peer's own network"),
    ("local cidrs overlap", cfg(PEER_A | {"local": [m("10.244.0.0/16", "10.246.0.0/16"), m("10.244.1.0/24", "10.247.1.0/24")]}), "peers[0].local[1].cidr: 10.244.1.0/24 overlaps peers[0].local[0].cidr 10.244.0.0/16"),
    ("local as overlap", cfg(PEER_A | {"local": [m("10.244.0.0/16", "10.246.0.0/16"), m("10.248.0.0/16", "10.246.0.0/16")]}, cidrs=["10.244.0.0/16", "10.248.0.0/16"]), "peers[0].local[1].as: 10.246.0.0/16 overlaps peers[0].local[0].as 10.246.0.0/16"),
    # our address on a tunnel (peers[].address)
    ("address without prefix", cfg(PEER_A | {"address": "10.192.0.2"}), "peers[0].address: 10.192.0.2 has no prefix length (write 10.192.0.2/32)"),
    ("address not an address", cfg(PEER_A | {"address": "10.192.0.300/24"}), "peers[0].address: invalid address 10.192.0.300/24: expected address/prefix, e.g. 10.192.0.2/24"),
    ("address is the network", cfg(PEER_A | {"address": "10.192.0.0/24"}), "peers[0].address: 10.192.0.0 is the network address of 10.192.0.0/24"),
    ("address is the broadcast", cfg(PEER_A | {"address": "10.192.0.255/24"}), "peers[0].address: 10.192.0.255 is the broadcast address of 10.192.0.0/24"),
    ("address v6 is the subnet", cfg(PEER_A | {"address": "fd00:192::/64"}), "peers[0].address: fd00:192:: is the network address of fd00:192::/64"),
    ("address on interface peer", cfg(link("lab", "eth1", m("10.1.0.0/16"), address="10.192.0.2/24")), "peers[0].address: not allowed with interface: (no tunnel)"),
    ("address in our cidrs", cfg(PEER_A | {"address": "10.244.7.1/24"}), "peers[0].address: 10.244.7.0/24 overlaps our cidrs[0] 10.244.0.0/16; routes would collide"),
    ("address in own as", cfg(PEER_A | {"address": "10.245.0.1/24"}), "peers[0].address: 10.245.0.0/24 overlaps peers[0].remote[0].as 10.245.0.0/16; routes would collide"),
    ("address in other peer's range", cfg(tunnel("a", PUB_A, m("10.192.0.0/24")), tunnel("b", PUB_B, m("10.1.0.0/16"), address="10.192.0.2/24")), "peers[1].address: 10.192.0.0/24 overlaps peers[0].remote[0].cidr 10.192.0.0/24; routes would collide"),
    ("same address network twice", cfg(PEER_A | {"address": "10.192.0.2/24"}, tunnel("b", PUB_B, m("10.1.0.0/16"), address="10.192.0.3/24")), "peers[1].address: 10.192.0.0/24 overlaps peers[0].address 10.192.0.0/24; routes would collide"),
    ("address in remapped cidr", cfg(tunnel("a", PUB_A, m("10.192.0.0/24", "10.50.0.0/24"), address="10.192.0.2/24")), "peers[0].address: 10.192.0.0/24 overlaps peers[0].remote[0].cidr 10.192.0.0/24, which as: remaps; the address would be translated"),
    ("fastpath unknown", cfg(fastpath="fast"), "fastpath: expected one of 'auto', 'tc', 'xdp' or 'off'"),
    ("lanDevices twice", cfg(lanDevices=["eth0", "eth0"]), "lanDevices[1]: eth0 is listed twice"),
    ("lanDevices a peer's device", cfg(link("lab", "eth1", m("10.1.0.0/16")), lanDevices=["eth1"]), "lanDevices[0]: eth1 is the device of peers[0]"),
    ("lanDevices bad name", cfg(lanDevices=["a/b"]), "lanDevices[0]: invalid device name 'a/b'"),
    ("local as overlaps an address", cfg(PEER_A | {"address": "10.192.0.2/24"}, tunnel("b", PUB_B, m("10.1.0.0/16"), local=[m("10.244.0.0/16", "10.192.0.0/16")])), "peers[1].local[0].as: 10.192.0.0/16 overlaps peers[0].address 10.192.0.0/24"),
    # replica groups
    ("group name", cfg(PEER_A | {"group": "a b"}), "peers[0].group: invalid name 'a b': use letters, digits, '_', '.' and '-', starting with a letter or digit"),
    ("weight 0", cfg(PEER_A | {"group": "g", "weight": 0}), "peers[0].weight: 0 is out of range 1..256"),
    ("weight 257", cfg(PEER_A | {"group": "g", "weight": 257}), "peers[0].weight: 257 is out of range 1..256"),
    ("staleAfter 0", cfg(PEER_A | {"group": "g", "staleAfter": 0}), "peers[0].staleAfter: 0 is out of range 1..65535"),
    ("weight without group", cfg(PEER_A | {"weight": 2}), "peers[0].weight: only with group: (a peer without group has a route of its own)"),
    ("staleAfter without group", cfg(PEER_A | {"staleAfter": 4, "persistentKeepalive": 1}), "peers[0].staleAfter: only with group: (a peer without group has a route of its own)"),
    ("interface peer in a group", cfg(link("lab", "eth1", m("10.1.0.0/16"), group="g")), "peers[0].group: only for WireGuard peers, not interface: ones: a member leaves the route when nothing is received from it, and a link has no receive counter of its own"),
    ("staleAfter without keepalive", cfg(MEMBER_A | {"staleAfter": 4, "persistentKeepalive": None}), "peers[0].staleAfter: needs persistentKeepalive: without keepalives an idle member receives nothing and would leave the route (without both, its device alone is judged)"),
    ("staleAfter within a keepalive", cfg(MEMBER_A | {"staleAfter": 5, "persistentKeepalive": 5}), "peers[0].staleAfter: 5 s is not longer than persistentKeepalive (5 s): a live member would leave the route between two keepalives"),
    ("members' remote differ", cfg(MEMBER_A, MEMBER_B | {"remote": [m("10.244.0.0/16", "10.245.0.0/16")]}), "peers[1].remote: differs from peers[0].remote (a) in group g; every member of a group must have the same remote"),
    ("members' as differ", cfg(MEMBER_A, MEMBER_B | {"remote": [m("10.244.0.0/16", "10.247.0.0/16"), m("fd00:1::/64", "fd00:2::/64")]}), "peers[1].remote: differs from peers[0].remote (a) in group g; every member of a group must have the same remote"),
    ("members' local differ", cfg(MEMBER_A | {"local": [m("10.244.0.0/16", "10.246.0.0/16")]}, MEMBER_B), "peers[1].local: differs from peers[0].local (a) in group g; every member of a group must have the same local"),
    ("two groups share a range", cfg(MEMBER_A, MEMBER_B | {"group": "h"}), "peers[1].remote[0].as: 10.245.0.0/16 overlaps peers[0].remote[0].as 10.245.0.0/16; routes would collide"),
    ("a group and a peer share a range", cfg(MEMBER_A, MEMBER_B, tunnel("c", PUB_C, m("10.244.0.0/16", "10.245.0.0/16"))), "peers[2].remote[0].as: 10.245.0.0/16 overlaps peers[0].remote[0].as 10.245.0.0/16; routes would collide"),
    ("members' addresses collide", cfg(MEMBER_A | {"address": "10.192.0.2/24"}, MEMBER_B | {"address": "10.192.0.3/24"}), "peers[1].address: 10.192.0.0/24 overlaps peers[0].address 10.192.0.0/24; routes would collide"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_config(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    "data",
    [
        cfg(PEER_A, link("lab", "eth1", m("10.244.0.0/16", "10.247.0.0/16"))),
        # Two peers may use the same real range: each has its own device.
        cfg(PEER_A, tunnel("b", PUB_B, m("10.244.0.0/16", "10.246.0.0/16"))),
        # Dual stack everywhere.
        cfg(
            tunnel("a", PUB_A, m("fd00:1::/64", "fd00:2::/64"), endpoint="[2001:db8::1]:51820"),
            cidrs=["10.244.0.0/16", "fd00:1::/64"],
            metrics="[::]:9000",
        ),
        cfg(PEER_A | {"endpoint": "gw-2.example.org:51820", "persistentKeepalive": 0}),
        cfg(),
        # A hub client: our address in the hub's pool, which is also routed as a remote range.
        cfg(PEER_A | {"address": "10.192.0.2/24", "remote": [m("10.192.0.0/24"), m("10.250.0.0/16")]}),
        cfg(PEER_A | {"address": "10.192.0.2/32"}, tunnel("b", PUB_B, m("10.1.0.0/16"), address="fd00:192::2/64")),
        # A group's members share their remote, in any order, and may each have an address.
        cfg(MEMBER_A | {"address": "10.192.0.2/31"},
            MEMBER_B | {"remote": MEMBER_A["remote"][::-1], "address": "10.192.0.4/31"}),
        cfg(MEMBER_A | {"group": "solo", "weight": 3}),
    ],
    ids=["interface peer", "same real range twice", "dual stack", "hostname endpoint", "no peers",
         "hub client address", "addresses /32 and v6", "group", "group of one"],
)
def test_valid_config(data: dict[str, Any]) -> None:
    parse_config(data, Path("."))


@pytest.mark.parametrize(
    ("a", "b", "stale"),
    [
        ({}, {"weight": 3, "staleAfter": 2}, (2.5, 2.0)),  # default: 2 keepalives and half a second
        ({"persistentKeepalive": None}, {"persistentKeepalive": 0, "weight": 3}, (None, None)),  # device alone
    ],
)
def test_group_accessors(a: dict[str, Any], b: dict[str, Any], stale: tuple) -> None:
    c = parse_config(cfg(MEMBER_A | a | {"address": "10.192.0.2/31"}, MEMBER_B | b,
                         tunnel("c", PUB_C, m("10.244.0.0/16", "10.247.0.0/16"), group="solo")),
                     Path("."))
    pa, pb, pc = c.peers
    assert list(c.groups) == ["g"] and c.groups["g"] == [pa, pb]  # a group of one is no group
    assert [str(n) for n in c.group_networks("g")] == ["10.245.0.0/16", "fd00:2::/64"]
    assert (pa.route_weight, pb.route_weight) == (1, 3)
    assert (pa.stale_seconds, pb.stale_seconds) == stale
    # The group's route carries the shared ranges; a member's device keeps its own address.
    assert [str(n) for n in c.device_routes(pa)] == ["10.192.0.2/31"]
    assert c.device_routes(pb) == [] and c.device_routes(pc) == pc.routed_networks


# --- the private key file ---


@pytest.mark.parametrize(
    ("mode", "what"),
    [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "writable")],
)
def test_key_file_mode_too_open(key_file: Path, mode: int, what: str) -> None:
    key_file.chmod(mode)
    data = cfg(PEER_A, privateKeyFile=key_file.name)
    del data["privateKey"]
    assert error_of(data, key_file.parent) == (
        f"privateKeyFile: {key_file}: permissions {mode:04o} are too open "
        f"(must not be {what} by group or others; chmod 600 it)"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_file_private_modes_are_accepted(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    data = cfg(PEER_A, privateKeyFile=key_file.name)
    del data["privateKey"]
    assert parse_config(data, key_file.parent).public_key == OWN_PUBLIC


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_key_file_owned_by_another_user(key_file: Path) -> None:
    os.chown(key_file, 65534, -1)  # nobody
    data = cfg(PEER_A, privateKeyFile=key_file.name)
    del data["privateKey"]
    assert error_of(data, key_file.parent) == (
        f"privateKeyFile: {key_file}: owned by uid 65534, not by the user natgw runs as (uid 0)"
    )


def test_key_file_owned_by_another_user_without_root(key_file: Path, monkeypatch) -> None:
    # The check compares with the effective uid; pretend to be someone else.
    monkeypatch.setattr(os, "geteuid", lambda: key_file.stat().st_uid + 1)
    data = cfg(PEER_A, privateKeyFile=key_file.name)
    del data["privateKey"]
    assert "owned by uid" in error_of(data, key_file.parent)


def test_key_file_must_be_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.key", 0o600)
    data = cfg(PEER_A, privateKeyFile="fifo.key")
    del data["privateKey"]
    assert error_of(data, tmp_path) == f"privateKeyFile: {tmp_path}/fifo.key is not a regular file"


def test_public_key_is_derived_once_per_load(key_file: Path, monkeypatch) -> None:
    calls = []
    real = keys.public_key
    monkeypatch.setattr(keys, "public_key", lambda k: calls.append(1) or real(k))
    data = cfg(PEER_A, privateKeyFile=key_file.name)
    del data["privateKey"]
    c = parse_config(data, key_file.parent)
    assert [c.public_key, c.public_key, c.public_key] == [OWN_PUBLIC] * 3
    assert len(calls) == 1


def test_key_file_missing(tmp_path: Path) -> None:
    data = cfg(PEER_A, privateKeyFile="nope.key")
    del data["privateKey"]
    assert error_of(data, tmp_path) == f"privateKeyFile: {tmp_path}/nope.key does not exist"


def test_key_file_not_a_key(key_file: Path) -> None:
    key_file.write_text("hello\n")
    data = cfg(PEER_A, privateKeyFile=key_file.name)
    del data["privateKey"]
    assert error_of(data, key_file.parent) == (
        f"privateKeyFile: {key_file}: not a WireGuard key: expected 44 base64 characters, got 5"
    )


# --- load_config: YAML-level errors ---


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "name: c1\ncidrs: [10.0.0.0/8\n",
            "line 3, column 1: expected ',' or ']', but got '<stream end>'",
        ),
        ("name: c1\n  cidrs: x\n", "line 2, column 8: mapping values are not allowed here"),
        ("name: c1\ncidrs: []\nname: c2\n", "line 3, column 1: duplicate key name"),
        ("", "expected a mapping at the top level, got an empty file"),
        ("- name: c1\n", "expected a mapping at the top level, got a list"),
    ],
)
def test_load_config_yaml_errors(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert (e.value.path, e.value.reason) == (str(path), reason)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert str(e.value) == f"{tmp_path}/nope.yaml: cannot read: No such file or directory"
