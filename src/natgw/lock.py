"""One change at a time per gateway: an flock on /run/natgw/<gateway>.lock.

`up`, `down`, a SIGHUP reload and a drift repair all take it, so mapping ids,
device slots and the state file are only ever written by one natgw. The lock
dies with its holder (the kernel drops an flock when the fd closes), so a
SIGKILLed natgw never leaves a gateway locked; the file itself may stay.
The holder writes its PID into the file so that a waiter can name it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from natgw import faults
from natgw.state import STATE_DIR, private_dir

DEFAULT_TIMEOUT = float(os.environ.get("NATGW_LOCK_TIMEOUT", "30"))
POLL = 0.05  # seconds between attempts while another natgw holds the lock


class LockTimeout(Exception):
    """Another natgw held the gateway's lock for longer than the timeout; one line."""


def lock_path(gateway: str) -> Path:
    return STATE_DIR / f"{gateway}.lock"


def holder(path: Path) -> int | None:
    """PID written by the lock's holder, None if unknown."""
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


@contextmanager
def gateway_lock(gateway: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the gateway's lock for the block; wait at most `timeout` seconds for it.

    Re-entrant within a process is not needed: callers take it once, at the top.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    private_dir()
    path = lock_path(gateway)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                pid = holder(path)
                who = f"pid {pid}" if pid else "another natgw"
                raise LockTimeout(f"gateway {gateway} is busy: {who} holds {path} "
                                  f"(waited {timeout:g}s)")
            time.sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        faults.step("locked")
        yield
    finally:
        os.close(fd)  # releases the flock
