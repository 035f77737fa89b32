"""The wireguard-go engine: one supervised `wireguard-go -f <ifname>` per device.

The process runs in the device's netns (`ip netns exec`), in its own session so
it outlives natgw (the dataplane keeps forwarding when natgw is stopped), with
its output in <run_dir>/<ifname>.log and its PID in <run_dir>/<ifname>.pid.
It is configured over its UAPI socket /var/run/wireguard/<ifname>.sock. That
directory is shared by every netns, so before touching a socket we check that
the process serving it lives in the netns we were asked about.

Recovery after a crash is the caller's loop: `is_alive` false -> `ensure_device`
+ `configure` again, then restore link state (the TUN link, with its addresses
and routes, disappears with the process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from natgw import netns as ns
from natgw import proc
from natgw.wireguard.model import DeviceConfig, DeviceStatus, WireGuardError, check_ifname
from natgw.wireguard.plan import Plan, plan_changes
from natgw.wireguard.uapi import SOCKET_DIR, UapiClient, socket_path

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/natgw/wg")


class WireGuardGoEngine:
    """Engine for hosts without the WireGuard kernel module."""

    name = "wireguard-go"

    def __init__(
        self,
        run_dir: Path = RUN_DIR,
        binary: str = "wireguard-go",
        start_timeout: float = 5.0,
        stop_timeout: float = 3.0,
        uapi_timeout: float = 2.0,
    ) -> None:
        self.run_dir = run_dir
        self.binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.uapi_timeout = uapi_timeout
        # Processes started by this engine object, kept so that they get reaped.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # --- files -------------------------------------------------------------

    def pid_path(self, ifname: str) -> Path:
        return self.run_dir / f"{ifname}.pid"

    def log_path(self, ifname: str) -> Path:
        return self.run_dir / f"{ifname}.log"

    def _read_pid(self, ifname: str) -> int | None:
        try:
            return int(self.pid_path(ifname).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _write_pid(self, ifname: str, pid: int) -> None:
        from natgw.state import write_private  # noqa: PLC0415

        write_private(self.pid_path(ifname), f"{pid}\n")

    def _client(self, ifname: str, timeout: float | None = None) -> UapiClient:
        """A UAPI client; `timeout` shortens (never lengthens) uapi_timeout."""
        wait = self.uapi_timeout if timeout is None else min(self.uapi_timeout, timeout)
        return UapiClient(ifname, SOCKET_DIR, wait)

    # --- process identity ----------------------------------------------------

    def _reap(self, ifname: str) -> None:
        child = self._children.get(ifname)
        if child is not None and child.poll() is not None:
            del self._children[ifname]

    def _runs_device(self, pid: int, ifname: str) -> bool:
        """pid is a live `wireguard-go -f <ifname>` (guards against reused PIDs)."""
        argv = proc.argv(pid)
        return (
            bool(argv)
            and os.path.basename(argv[0]) == os.path.basename(self.binary)
            and argv[-1] == ifname
        )

    def _is_our_process(self, pid: int, ifname: str, netns: str | None) -> bool:
        """pid runs device `ifname` and lives in netns `netns`."""
        self._reap(ifname)
        return self._runs_device(pid, ifname) and ns.pid_netns_id(pid) == ns.netns_id(netns)

    def _socket_owner(self, ifname: str, netns: str | None) -> int | None:
        """PID serving the UAPI socket, None if none; raises on a name collision."""
        pid = self._client(ifname).server_pid()
        if pid is None:
            return None
        owner_netns = ns.pid_netns_id(pid)
        if owner_netns is None:
            # Exiting (e.g. killed): once its last thread is gone the socket is stale.
            proc.wait_exit(pid, self.stop_timeout)
            self._reap(ifname)
            return None
        if owner_netns != ns.netns_id(netns):
            where = "natgw's own netns" if netns is None else f"netns {netns}"
            raise WireGuardError(
                f"wireguard-go {ifname}: {socket_path(ifname)} is served by pid {pid} outside "
                f"{where} (device names must be unique host-wide)"
            )
        return pid

    def _require_netns(self, netns: str | None) -> None:
        try:
            ns.require_netns(netns)
        except ns.NetnsNotFound as exc:
            raise WireGuardError(str(exc)) from None

    # --- Engine API ----------------------------------------------------------

    def ensure_device(self, ifname: str, netns: str | None) -> None:
        """Start wireguard-go for `ifname` in `netns` unless it already runs there."""
        check_ifname(ifname)
        self._require_netns(netns)
        owner = self._socket_owner(ifname, netns)
        if owner is not None:
            if not self._is_our_process(owner, ifname, netns):
                raise WireGuardError(
                    f"wireguard-go {ifname}: {socket_path(ifname)} is served by pid {owner}, "
                    "which is not wireguard-go for this device"
                )
            if self._read_pid(ifname) != owner:
                self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._write_pid(ifname, owner)
            return
        # A recorded process without a working socket cannot be configured: replace it.
        self._stop_recorded(ifname, netns)
        socket_path(ifname).unlink(missing_ok=True)  # stale: nothing answered on it
        self._start(ifname, netns)

    def configure(self, ifname: str, netns: str | None, cfg: DeviceConfig) -> None:
        """Make the device's keys, port and peers equal `cfg`, writing only differences."""
        check_ifname(ifname)
        self._require_netns(netns)
        if self._socket_owner(ifname, netns) is None:
            raise WireGuardError(f"wireguard-go {ifname}: device not running (ensure_device first)")
        client = self._client(ifname)
        plan = plan_changes(client.get(), cfg)
        if not plan.is_empty():
            log.info(
                "wireguard-go %s: key %s, port %s, -%d +/~%d peers",
                ifname,
                "changed" if plan.private_key is not None else "kept",
                plan.listen_port or "kept",
                len(plan.remove),
                len(plan.upsert),
            )
            client.set(plan)

    def apply_plan(self, ifname: str, netns: str | None, plan: Plan) -> None:
        """Write a difference the caller already knows (no read-back of the device)."""
        check_ifname(ifname)
        self._require_netns(netns)
        if self._socket_owner(ifname, netns) is None:
            raise WireGuardError(f"wireguard-go {ifname}: device not running (ensure_device first)")
        if not plan.is_empty():
            self._client(ifname).set(plan)

    def status(self, ifname: str, netns: str | None, timeout: float | None = None
               ) -> DeviceStatus:
        check_ifname(ifname)
        self._require_netns(netns)
        pid = self._socket_owner(ifname, netns)
        if pid is None:
            raise WireGuardError(f"wireguard-go {ifname}: device not running")
        state = self._client(ifname, timeout).get()
        # UAPI reports only the private key. Deriving the public key from it at every
        # status and scrape would handle the secret for nothing: natgw derives it once
        # per apply and keeps it in its state (natgw.gateway).
        return DeviceStatus(
            ifname=ifname,
            engine="wireguard-go",
            public_key=None,
            listen_port=state.listen_port,
            peers=state.peers,
            pid=pid,
        )

    def is_alive(self, ifname: str, netns: str | None) -> bool:
        """The recorded process runs in `netns` and answers on its UAPI socket."""
        pid = self._read_pid(ifname)
        if pid is None or not self._is_our_process(pid, ifname, netns):
            return False
        try:
            return self._client(ifname).server_pid() == pid
        except WireGuardError:
            return False

    def delete(self, ifname: str, netns: str | None) -> None:
        """Stop the device's process and remove its pid and log files, stale socket and link."""
        check_ifname(ifname)
        if netns is not None and not ns.netns_exists(netns):
            self._delete_in_vanished_netns(ifname)
            return
        try:
            owner = self._socket_owner(ifname, netns)
        except WireGuardError:
            log.info("wireguard-go %s: not in %s, left alone", ifname, netns or "own netns")
            return  # the name is another netns's device: nothing of ours to remove
        if owner is not None and self._is_our_process(owner, ifname, netns):
            self._stop(ifname, owner)
        self._stop_recorded(ifname, netns)
        self._forget_files(ifname)
        if self._client(ifname).server_pid() is None:
            socket_path(ifname).unlink(missing_ok=True)
        self._delete_link(ifname, netns)

    def _delete_in_vanished_netns(self, ifname: str) -> None:
        # The netns lost its name (its link went with it), but our process may
        # still pin it. Stop that process, never a same-named device in a netns
        # that still has a name.
        pid = self._read_pid(ifname)
        if pid is not None and self._runs_device(pid, ifname):
            if ns.pid_netns_id(pid) in ns.named_netns_ids():
                return
            self._stop(ifname, pid)
        self._forget_files(ifname)
        if self._client(ifname).server_pid() is None:
            socket_path(ifname).unlink(missing_ok=True)

    def _forget_files(self, ifname: str) -> None:
        # The log only explains a process that failed; once the device is deleted
        # nothing is left for it to explain, and /run must not fill with them.
        self.pid_path(ifname).unlink(missing_ok=True)
        self.log_path(ifname).unlink(missing_ok=True)

    # --- process control -----------------------------------------------------

    def _start(self, ifname: str, netns: str | None) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise WireGuardError(f"engine wireguard-go: {self.binary} not found on PATH")
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # WG_PROCESS_FOREGROUND=0 makes some versions re-fork without end; -f is enough.
        env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
        argv = ns.exec_argv(netns, [binary, "-f", ifname])
        # 0600 from creation, like every file natgw writes under /run/natgw.
        fd = os.open(self.log_path(ifname), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "ab") as logf:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=env,
                start_new_session=True,  # survive natgw's exit and its terminal's signals
            )
        old = self._children.get(ifname)
        if old is not None:
            old.poll()  # reap a predecessor that died (its exit was already waited for)
        self._children[ifname] = child
        self._write_pid(ifname, child.pid)
        log.info("wireguard-go %s: started pid %d in %s", ifname, child.pid, netns or "own netns")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if child.poll() is not None:
                self.pid_path(ifname).unlink(missing_ok=True)
                raise WireGuardError(
                    f"wireguard-go {ifname}: exited with status {child.returncode} while "
                    f"starting: {self._last_log_line(ifname)}"
                )
            if self._client(ifname).server_pid() == child.pid:
                return
            time.sleep(0.02)
        self._stop(ifname, child.pid)
        self.pid_path(ifname).unlink(missing_ok=True)
        raise WireGuardError(
            f"wireguard-go {ifname}: no UAPI socket {socket_path(ifname)} after "
            f"{self.start_timeout:g}s (log: {self.log_path(ifname)})"
        )

    def _last_log_line(self, ifname: str) -> str:
        try:
            lines = self.log_path(ifname).read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "no log"
        return lines[-1][:200] if lines else "empty log"

    def _stop_recorded(self, ifname: str, netns: str | None) -> None:
        """Stop the process in the pid file if it runs this device; wait out a dying one."""
        pid = self._read_pid(ifname)
        if pid is None:
            return
        if proc.state(pid) == "Z":
            # Exited but not reaped, so the PID is not reused yet: wait until its
            # TUN is gone, or a restart could not create the link again.
            proc.wait_exit(pid, self.stop_timeout)
            self._reap(ifname)
        elif self._is_our_process(pid, ifname, netns):
            self._stop(ifname, pid)

    def _stop(self, ifname: str, pid: int) -> None:
        """SIGTERM, then SIGKILL after stop_timeout; returns once every thread is gone."""
        if not proc.end_process(pid, ifname, self.stop_timeout):
            raise WireGuardError(f"wireguard-go {ifname}: pid {pid} survived SIGKILL")
        self._reap(ifname)
        log.info("wireguard-go %s: stopped pid %d", ifname, pid)

    def _delete_link(self, ifname: str, netns: str | None) -> None:
        # The TUN link normally dies with the process; remove one left behind
        # (only a TUN: a link of another kind with this name is not wireguard-go's).
        with contextlib.suppress(ns.NetnsNotFound), ns.iproute(netns) as ipr:
            for index in ipr.link_lookup(ifname=ifname):
                if ipr.get_links(index)[0].get(("linkinfo", "kind")) == "tun":
                    ipr.link("del", index=index)
