"""Any exception a control-plane step can raise, as the one line a user reads.

iproute2 and wg-quick print one line per failure; natgw does the same for the
errors of the libraries under it (pyroute2's NetlinkError, subprocess's
CalledProcessError, OSError...) instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess


def one_line(exc: BaseException) -> str:
    """A single line describing exc; never its traceback, never its locals."""
    try:
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        NetlinkError = ()  # noqa: N806
    if isinstance(exc, subprocess.CalledProcessError):
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
        last = err.strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
        text = f"{cmd}: {last[0]}"
    elif NetlinkError and isinstance(exc, NetlinkError):
        code = exc.code
        text = f"netlink: {os.strerror(code) if code else 'error'}" + \
            (f" ({errno.errorcode.get(code, code)})" if code else "")
        if len(exc.args) > 1 and exc.args[1] and exc.args[1] != os.strerror(code):
            text += f": {exc.args[1]}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    elif isinstance(exc, (LookupError, TypeError, AttributeError, AssertionError)) \
            or not str(exc):
        # Programming errors and message-less exceptions: the type says most.
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        text = str(exc)
    return " ".join(text.split())
