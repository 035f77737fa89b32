"""Ending a process natgw (or its lab) started, by PID, never another one.

A recorded PID may have been reused by the time it is ended. So the process is
pinned with a pidfd first, and signalled only if it still carries the marker
its starter recorded (one of its arguments, e.g. the device wireguard-go runs).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from pathlib import Path

KILL_GRACE = 2.0  # seconds a SIGKILLed process gets to release its resources


def state(pid: int) -> str | None:
    """State letter of process `pid` ("Z" for a zombie), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def argv(pid: int) -> list[str] | None:
    """argv of a live process, None if it is gone or has exited."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if state(pid) in (None, "Z", "X"):
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until all threads of `pid` have exited; True if they did in time.

    Only then are its fds closed: a SIGKILLed multi-threaded process's main
    thread is a zombie while its other threads still hold them.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # A pidfd becomes readable once the whole thread group has exited.
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def end_process(pid: int, marker: str, timeout: float = 3.0) -> bool:
    """SIGTERM `pid` if it runs with `marker` among its arguments, SIGKILL after `timeout`.

    Returns once all its threads are gone (it is reaped if it is our child);
    False only if it outlived SIGKILL. A process that is gone or does not carry
    the marker is left alone (True).
    """
    try:
        pidfd = os.pidfd_open(pid)  # pins the process: no signal can reach a reused PID
    except ProcessLookupError:
        return True
    try:
        if marker not in (argv(pid) or []):
            return True
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, KILL_GRACE)):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
            if select.select([pidfd], [], [], wait)[0]:
                break
        else:
            return False
    finally:
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):  # our child: reap it (a zombie too)
            os.waitpid(pid, os.WNOHANG)
    return True
