"""WireGuard key files for the lab's gateways: created 0600, never readable by others."""

from __future__ import annotations

import os
from pathlib import Path

from natgw import keys


def write_key(path: Path, private: str) -> Path:
    """Write a private key to a new file that is 0600 from its creation.

    O_EXCL: never reuse (or follow a link to) a file someone else made.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
    return path


def new_key(path: Path) -> str:
    """A fresh private key written to `path`; returns its public key."""
    private = keys.genkey()
    write_key(path, private)
    return keys.pubkey(private)
