"""WireGuard keys: base64 Curve25519 keys, made and checked as `wg genkey` / `wg pubkey` do.

X25519 is RFC 7748 in pure Python, so natgw needs no crypto dependency just to derive a
public key. Python integers are not constant time; that is acceptable here because natgw
only derives its own public key once, locally, and never computes shared secrets.
"""

import base64
import binascii
import os

KEY_LEN = 32
KEY_LEN_BASE64 = 44  # base64 of 32 bytes, one '=' of padding

_P = 2**255 - 19
_A24 = 121665
_BASE_POINT = (9).to_bytes(KEY_LEN, "little")


def clamp(scalar: bytes) -> bytes:
    """Clamp a Curve25519 private scalar (RFC 7748 section 5), as `wg genkey` does."""
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 X25519: the Montgomery ladder on Curve25519, 32-byte little-endian in and out."""
    if len(scalar) != KEY_LEN or len(u) != KEY_LEN:
        raise ValueError("x25519 takes a 32-byte scalar and a 32-byte u-coordinate")
    k = int.from_bytes(clamp(scalar), "little")
    # The top bit of u is ignored and non-canonical values are reduced (RFC 7748 section 5).
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x1 %= _P
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_LEN, "little")


def decode_key(b64: str) -> bytes:
    """Decode a base64 WireGuard key to its 32 bytes; ValueError says why it is not one.

    Surrounding whitespace (a trailing newline from a file) is ignored. Like `wg`, only the
    canonical encoding is accepted. Messages never repeat the input: it may be a private key.
    """
    if not isinstance(b64, str):
        raise ValueError(f"not a WireGuard key: expected a base64 string, got {type(b64).__name__}")
    text = b64.strip()
    if len(text) != KEY_LEN_BASE64:
        raise ValueError(
            f"not a WireGuard key: expected {KEY_LEN_BASE64} base64 characters, got {len(text)}"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not a WireGuard key: invalid base64") from None
    if len(raw) != KEY_LEN:
        raise ValueError(f"not a WireGuard key: decodes to {len(raw)} bytes, expected {KEY_LEN}")
    if encode_key(raw) != text:
        raise ValueError("not a WireGuard key: non-canonical base64 (unused bits are set)")
    return raw


def encode_key(raw: bytes) -> str:
    """Base64 text of a 32-byte key."""
    if len(raw) != KEY_LEN:
        raise ValueError(f"a WireGuard key is {KEY_LEN} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def public_key(private: bytes) -> bytes:
    """The 32-byte public key of a 32-byte private key."""
    return x25519(private, _BASE_POINT)


def genkey() -> str:
    """A new clamped private key in base64, like `wg genkey`."""
    return encode_key(clamp(os.urandom(KEY_LEN)))


def pubkey(private_b64: str) -> str:
    """The base64 public key of a base64 private key, like `wg pubkey`."""
    return encode_key(public_key(decode_key(private_b64)))
