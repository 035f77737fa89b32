"""The lab's key files: 0600 from creation, never an existing file reused."""

from __future__ import annotations

import os
import stat

import pytest

from lab.keys import new_key, write_key
from natgw import keys


def test_key_file_is_private_from_creation(tmp_path):
    old = os.umask(0)  # even with no umask to help, the file is never group/other readable
    try:
        pub = new_key(tmp_path / "c1.key")
    finally:
        os.umask(old)
    path = tmp_path / "c1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.pubkey(path.read_text().strip()) == pub


def test_an_existing_file_is_not_overwritten(tmp_path):
    path = tmp_path / "c1.key"
    path.write_text("someone else's\n")
    with pytest.raises(FileExistsError):
        write_key(path, keys.genkey())
    assert path.read_text() == "someone else's\n"
