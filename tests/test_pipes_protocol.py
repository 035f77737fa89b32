"""The pipe request parser against good and hostile input, and the derived pipe addresses."""

# ruff: noqa: E501 - one case per line, like a fixture table.

import struct
from ipaddress import IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natgw import keys
from natgw.pipes.protocol import (
    MAGIC,
    MAX_HOPS,
    MAX_TEXT,
    PREFIX_LEN,
    ProtocolError,
    Request,
    Status,
    parse_request,
    parse_text,
    text_length,
)
from natgw.tunnel_address import tunnel_address, tunnel_network

K = [keys.pubkey(keys.genkey()) for _ in range(MAX_HOPS + 1)]


def frame(text: bytes) -> bytes:
    return MAGIC + struct.pack("!H", len(text)) + text


def test_round_trip() -> None:
    r = Request("nginx", (K[0], K[1]))
    assert parse_request(r.encode()) == r
    assert r.asker == K[1]
    assert r.passed_on(K[2]).chain == (K[0], K[1], K[2])


BAD = [
    ("wrong magic", b"NGP2" + struct.pack("!H", 5) + b"a " + K[0].encode(), "not a natgw pipe request"),
    ("http instead", b"GET / HTTP/1.1\r\n\r\n", "not a natgw pipe request"),
    ("zero length", frame(b""), "request text of 0 bytes (at most 424)"),
    ("too long", MAGIC + struct.pack("!H", MAX_TEXT + 1) + b"x" * (MAX_TEXT + 1), "request text of 425 bytes (at most 424)"),
    ("no chain", frame(b"nginx"), "expected '<pipe> <chain>'"),
    ("three fields", frame(f"nginx {K[0]} x".encode()), "expected '<pipe> <chain>'"),
    ("empty chain", frame(b"nginx "), "invalid public key in the chain"),
    ("not a key", frame(b"nginx 10.0.0.1:80"), "invalid public key in the chain"),
    ("short key", frame(f"nginx {K[0][:-2]}=".encode()), "invalid public key in the chain"),
    ("non-canonical key", frame(f"nginx {K[0][:42]}B=".encode()), "invalid public key in the chain"),
    ("address as name", frame(f"10.0.0.1:80 {K[0]}".encode()), "invalid pipe name"),
    ("path as name", frame(f"../etc {K[0]}".encode()), "invalid pipe name"),
    ("name too long", frame(f"{'a' * 65} {K[0]}".encode()), "invalid pipe name"),
    ("not ascii", frame(f"ngïnx {K[0]}".encode()), "request text is not ASCII"),
    ("nul in name", frame(f"ng\0nx {K[0]}".encode()), "invalid pipe name"),
    ("trailing comma", frame(f"nginx {K[0]},".encode()), "invalid public key in the chain"),
    ("loop in chain", frame(f"nginx {K[0]},{K[1]},{K[0]}".encode()), "a gateway appears twice in the chain"),
    ("too many hops", frame(("nginx " + ",".join(K[: MAX_HOPS + 1])).encode()), "chain of 9 gateways (at most 8)"),
    ("length lies", MAGIC + struct.pack("!H", 100) + f"nginx {K[0]}".encode(), "request length does not match its prefix"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_hostile_requests(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_request(data)
    assert str(e.value) == message


def test_max_hops_fit_the_text_limit() -> None:
    r = Request("a" * 64, tuple(K[:MAX_HOPS]))
    assert len(r.encode()) - PREFIX_LEN == MAX_TEXT
    with pytest.raises(ProtocolError):
        Request("nginx", tuple(K[: MAX_HOPS + 1]))


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        r = parse_request(data)
    except ProtocolError:
        return
    assert parse_request(r.encode()) == r


@given(st.binary(min_size=PREFIX_LEN, max_size=PREFIX_LEN))
def test_prefix_never_allows_more_than_max_text(prefix: bytes) -> None:
    try:
        n = text_length(prefix)
    except ProtocolError:
        return
    assert 0 < n <= MAX_TEXT


@given(st.text(max_size=100))
def test_any_text_parse_or_raise(text: str) -> None:
    try:
        parse_text(text.encode("utf-8"))
    except ProtocolError:
        pass


def test_status_bytes() -> None:
    assert Status.from_byte(0) is Status.OK
    assert Status.from_byte(200) is Status.BAD_REQUEST
    assert [s.label for s in Status][:3] == ["ok", "unknown_pipe", "forbidden"]


def test_pipe_addresses_are_link_local_stable_and_distinct() -> None:
    addrs = {tunnel_address(k) for k in K}
    assert len(addrs) == len(K)
    assert all(a in IPv6Network("fe80::/64") for a in addrs)
    assert tunnel_address(K[0]) == tunnel_address(K[0])
    assert tunnel_network(K[0]) == IPv6Network(f"{tunnel_address(K[0])}/128")
    # Pinned: two natgw versions must derive the same address from the same key.
    assert tunnel_address(keys.encode_key(bytes(range(32)))) == IPv6Address("fe80::8a28:243b:65f2:2703")
