"""WireGuard keys: Curve25519 (RFC 7748) public-key derivation and encodings.

wireguard-go's UAPI reports only the private key, so the device public key is
derived here. Pure Python, not constant-time: it runs once per status/config
call on the gateway itself, never on attacker-chosen input.
"""

from __future__ import annotations

import base64
import binascii
import secrets

KEY_LEN = 32
_P = 2**255 - 19
_A24 = 121665
_BASEPOINT = (9).to_bytes(KEY_LEN, "little")


def clamp(key: bytes) -> bytes:
    """Curve25519 scalar clamping, as `wg genkey` applies it."""
    b = bytearray(key)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 X25519: scalar multiplication on the Montgomery curve."""
    k = int.from_bytes(clamp(scalar), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = x2 + z2, x2 - z2
        aa, bb = a * a, b * b
        e = aa - bb
        c, d = x3 + z3, x3 - z3
        da, cb = d * a, c * b
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_LEN, "little")


def public_key(private_key: bytes) -> bytes:
    """The public key of a 32-byte private key."""
    if len(private_key) != KEY_LEN:
        raise ValueError("private key must be 32 bytes")
    return x25519(private_key, _BASEPOINT)


def generate_private_key() -> bytes:
    """A fresh random private key (clamped like `wg genkey`)."""
    return clamp(secrets.token_bytes(KEY_LEN))


def key_from_base64(text: str) -> bytes:
    """Decode a key in `wg` base64 form; ValueError if it is not 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ValueError("key is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise ValueError("key must decode to 32 bytes")
    return raw


def key_to_base64(key: bytes) -> str:
    """A key in the base64 form `wg` prints."""
    return base64.b64encode(key).decode("ascii")
