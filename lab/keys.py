"""WireGuard key files for the lab's gateways: created 0600, never readable by others."""

from __future__ import annotations

from pathlib import Path

from natgw import keys


def write_key(path: Path, private: str) -> Path:
    """Write a private key to a new file, 0600 from its creation (natgw's own writer)."""
    keys.write_private_key(path, private)
    return path


def new_key(path: Path) -> str:
    """A fresh private key written to `path`; returns its public key."""
    private = keys.genkey()
    write_key(path, private)
    return keys.pubkey(private)
