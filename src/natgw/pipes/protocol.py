"""The request one natgw sends another to open a pipe, and the one-byte reply.

A gateway that passes a connection on dials the next gateway's pipe address
(natgw.tunnel_address) on PIPE_PORT, inside the tunnel, and first writes:

    "NGP1"  magic and version                          4 bytes
    length  of the text that follows, big endian       2 bytes (at most MAX_TEXT)
    text    ASCII: "<pipe name> <key>,<key>,..."

The keys are the base64 WireGuard public keys of the gateways the connection
has passed, in order, the asking gateway last (at most MAX_HOPS). A gateway
finding its own key there refuses the loop. There is no address in the request:
the receiving gateway dials only what its own file names for that pipe.

The reply is one byte (Status): OK, then the connection's bytes; anything else,
then the connection is closed. OK shares a segment with the first bytes back
when they come within 50 ms (natgw.pipes.server.OK_DELAY); a failure is sent at
once. A gateway that passes a request on relays the next gateway's reply, so the
first gateway learns why the far end failed.
The client's first bytes may follow the request at once: they wait in the
socket until the far side has its own connection.
"""

from __future__ import annotations

import binascii
import enum
import re
import struct
from dataclasses import dataclass

from natgw.keys import KEY_LEN, KEY_LEN_BASE64

PIPE_PORT = 51870  # TCP, bound only to the gateway's pipe address on each tunnel device
MAGIC = b"NGP1"
PREFIX_LEN = len(MAGIC) + 2
MAX_HOPS = 8
MAX_NAME = 64
MAX_TEXT = MAX_NAME + 1 + MAX_HOPS * KEY_LEN_BASE64 + (MAX_HOPS - 1)  # name, space, keys, commas

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")  # canonical base64 of 32 bytes


class Status(enum.IntEnum):
    """The reply byte; its lower-case name is the `result` label of the metrics."""

    OK = 0
    UNKNOWN_PIPE = 1  # the far side's file has no pipe of that name
    FORBIDDEN = 2  # its pipe's from: does not name the asking peer
    LOOP = 3  # the chain already passed the far side
    REFUSED = 4  # the far end refused the connection
    UNRESOLVED = 5  # the far end's host name did not resolve
    UNREACHABLE = 6  # no route, or the far end did not answer in time
    BAD_REQUEST = 7  # not a request of this protocol
    FAILED = 8  # anything else (the far side's log says what)

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_byte(cls, value: int) -> Status:
        try:
            return cls(value)
        except ValueError:
            return cls.BAD_REQUEST


class ProtocolError(ValueError):
    """A request that does not follow the protocol; the message says which part."""


@dataclass(frozen=True)
class Request:
    pipe: str
    chain: tuple[str, ...]  # public keys (base64) of the gateways passed, asker last

    def __post_init__(self) -> None:
        _check_name(self.pipe)
        if not self.chain:
            raise ProtocolError("empty chain")
        if len(self.chain) > MAX_HOPS:
            raise ProtocolError(f"chain of {len(self.chain)} gateways (at most {MAX_HOPS})")
        for key in self.chain:
            _check_key(key)
        if len(set(self.chain)) != len(self.chain):
            raise ProtocolError("a gateway appears twice in the chain")

    @property
    def asker(self) -> str:
        return self.chain[-1]

    def passed_on(self, own_key: str) -> Request:
        """The request this gateway sends the next one."""
        return Request(self.pipe, (*self.chain, own_key))

    def encode(self) -> bytes:
        text = f"{self.pipe} {','.join(self.chain)}".encode("ascii")
        return MAGIC + struct.pack("!H", len(text)) + text


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        raise ProtocolError("invalid pipe name")


def _check_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key):
        raise ProtocolError("invalid public key in the chain")
    try:
        if len(binascii.a2b_base64(key)) != KEY_LEN:
            raise ProtocolError("invalid public key in the chain")
    except binascii.Error:
        raise ProtocolError("invalid public key in the chain") from None


def text_length(prefix: bytes) -> int:
    """Check the fixed prefix; return the length of the text that follows."""
    if len(prefix) != PREFIX_LEN or prefix[: len(MAGIC)] != MAGIC:
        raise ProtocolError("not a natgw pipe request")
    (length,) = struct.unpack("!H", prefix[len(MAGIC):])
    if not 0 < length <= MAX_TEXT:
        raise ProtocolError(f"request text of {length} bytes (at most {MAX_TEXT})")
    return length


def parse_text(text: bytes) -> Request:
    """The request in `text` (the bytes after the prefix), or ProtocolError."""
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("request text is not ASCII") from None
    parts = decoded.split(" ")
    if len(parts) != 2:
        raise ProtocolError("expected '<pipe> <chain>'")
    name, chain = parts
    return Request(name, tuple(chain.split(",")))


def parse_request(data: bytes) -> Request:
    """A whole request (prefix and text), e.g. for tests; exact length required."""
    length = text_length(data[:PREFIX_LEN])
    if len(data) != PREFIX_LEN + length:
        raise ProtocolError("request length does not match its prefix")
    return parse_text(data[PREFIX_LEN:])
