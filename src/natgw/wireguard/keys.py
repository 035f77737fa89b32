"""WireGuard keys for the engines, on top of natgw.keys (one X25519 for all of natgw).

wireguard-go's UAPI reports only the private key, so the device public key is
derived here.
"""

from __future__ import annotations

from natgw.keys import KEY_LEN, clamp, decode_key, encode_key, genkey, public_key, x25519

__all__ = ["KEY_LEN", "clamp", "generate_private_key", "key_from_base64", "key_to_base64",
           "public_key", "x25519"]


def generate_private_key() -> bytes:
    """A fresh random private key (clamped like `wg genkey`)."""
    return decode_key(genkey())


def key_from_base64(text: str) -> bytes:
    """Decode a key in `wg` base64 form; ValueError if it is not one."""
    return decode_key(text)


def key_to_base64(key: bytes) -> str:
    """A key in the base64 form `wg` prints."""
    return encode_key(key)
