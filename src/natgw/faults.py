"""Test-only hooks at named steps of `up` and `down`, driven by the environment.

    NATGW_TEST_KILL_AT=peer-attached      natgw SIGKILLs itself when it reaches the step
    NATGW_TEST_FAIL_AT=routes-set:netlink the step raises an injected failure instead

Failure kinds are the exceptions natgw must turn into one line and a rollback:
`subprocess` (CalledProcessError), `netlink` (NetlinkError), `index`
(IndexError), `oserror` (FileNotFoundError). Unset (as in production), a step
costs one dictionary lookup. The names of every step are in STEPS, so a test
can walk all of them (HUB_STEPS: a hub's).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess

KILL_ENV = "NATGW_TEST_KILL_AT"
FAIL_ENV = "NATGW_TEST_FAIL_AT"

# Every step, in the order an apply (then a down) reaches them.
STEPS = (
    "locked",
    "intent-recorded",
    "sysctls-saved",
    "forwarding-set",
    "dataplane-loaded",
    "peer-intent",
    "device-created",
    "device-entry",
    "filters-attached",
    "mappings-set",
    "tunnel-configured",
    "link-up",
    "routes-set",
    "peer-recorded",
    "peer-remove-intent",
    "peer-routes-removed",
    "peer-detached",
    "peer-device-deleted",
    "peer-removed",
    "mapping-ingress-written",
    "mapping-egress-removed",
    "lan-intent",
    "applied",
    "down-peers-removed",
    "down-unpinned",
)

# The hub's steps (natgw.hub), reached only by a gateway with a hub: the kill
# test of a hub walks these, the one of peers walks STEPS.
HUB_STEPS = (
    "hub-intent",
    "hub-device-created",
    "hub-device-entry",
    "hub-filters-attached",
    "hub-mappings-set",
    "hub-tunnel-configured",
    "hub-link-up",
    "hub-routes-set",
    "hub-recorded",
    "hub-remove-intent",
    "hub-removed",
)


def _failure(kind: str, step: str) -> BaseException:
    if kind == "subprocess":
        return subprocess.CalledProcessError(1, ["injected", step], stderr=b"injected failure\n")
    if kind == "netlink":
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        return NetlinkError(errno.EBUSY, "injected failure")
    if kind == "index":
        return IndexError("list index out of range")
    if kind == "oserror":
        return FileNotFoundError(errno.ENOENT, "injected failure", step)
    raise ValueError(f"{FAIL_ENV}: unknown failure kind {kind!r}")


_fired: set[str] = set()


def step(name: str) -> None:
    """Mark that natgw reached step `name` (see STEPS); act on the test hooks.

    An injected failure fires once per process, so the rollback that follows
    it runs like after a real, transient failure.
    """
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    fail = os.environ.get(FAIL_ENV)
    if fail and fail not in _fired:
        at, _, kind = fail.partition(":")
        if at == name:
            _fired.add(fail)
            raise _failure(kind, name)
