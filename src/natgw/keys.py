"""WireGuard keys: base64 Curve25519 keys, made and checked as `wg genkey` / `wg pubkey` do.

X25519 comes from `cryptography` (OpenSSL's constant-time implementation); this module
only speaks WireGuard's key format and writes key files safely.
"""

import base64
import binascii
import os
from pathlib import Path

KEY_LEN = 32
KEY_LEN_BASE64 = 44  # base64 of 32 bytes, one '=' of padding
KEY_FILE_MODE = 0o600


def clamp(scalar: bytes) -> bytes:
    """Clamp a Curve25519 private scalar (RFC 7748 section 5), as `wg genkey` does."""
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


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
    """The 32-byte public key of a 32-byte private key (X25519 with the base point 9)."""
    # Imported here: only commands that derive a key pay for loading OpenSSL.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        PublicFormat,
    )

    if len(private) != KEY_LEN:
        raise ValueError(f"a WireGuard key is {KEY_LEN} bytes, got {len(private)}")
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def new_private_key() -> bytes:
    """A new clamped 32-byte private key, as `wg genkey` makes them."""
    return clamp(os.urandom(KEY_LEN))


def genkey() -> str:
    """A new clamped private key in base64, like `wg genkey`."""
    return encode_key(new_private_key())


def pubkey(private_b64: str) -> str:
    """The base64 public key of a base64 private key, like `wg pubkey`."""
    return encode_key(public_key(decode_key(private_b64)))


def write_private_key(path: Path | str, private_b64: str) -> None:
    """Write a base64 private key to a new file, mode 0600 from its creation.

    O_EXCL: an existing file (or a symlink planted in its place) is never
    overwritten; the key is never readable by others, not even for a moment.
    FileExistsError if the path exists.
    """
    decode_key(private_b64)  # refuse to write something that is not a key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(private_b64.strip() + "\n")
