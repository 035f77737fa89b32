"""A lab run's record: what it made, on disk as it is made, so that anything can remove it.

The harness (/run/natgw/harness) and the benchmark (/run/natgw/bench) keep one
<prefix>.json each next to the run's work directory. A run removed normally
deletes it; `python -m lab down` and `python -m bench --cleanup` read the ones a
killed run left. Processes are recorded with a marker, one argument of their
command line, and ended by natgw.proc.end_process only if they still carry it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.net import WG_SOCKET_DIR, LabError, add_netns, in_ns, run
from natgw.proc import end_process


@dataclass
class Record:
    prefix: str
    workdir: str  # <record dir>/<prefix>: configs, keys, logs
    namespaces: list[str] = field(default_factory=list)
    processes: list[list] = field(default_factory=list)  # [pid, marker]
    gateways: dict[str, str] = field(default_factory=dict)  # natgw config or name -> netns

    @property
    def path(self) -> Path:
        return Path(self.workdir).with_suffix(".json")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    @classmethod
    def create(cls, directory: Path, prefix: str, **fields: Any) -> Any:
        """A new record of run `prefix` under `directory`, with its work directory, saved."""
        rec = cls(prefix, str(directory / prefix), **fields)
        Path(rec.workdir).mkdir(parents=True, exist_ok=True)
        rec.save()
        return rec

    @classmethod
    def load(cls, directory: Path, prefix: str | None = None) -> list:
        if not directory.is_dir():
            return []
        return [cls.from_json(json.loads(p.read_text()))
                for p in sorted(directory.glob("*.json")) if prefix is None or p.stem == prefix]

    @classmethod
    def from_json(cls, data: dict) -> Any:
        if "pids" in data:  # recorded before markers: never signalled blindly
            data = dict(data, processes=[[pid, ""] for pid in data.pop("pids")])
        return cls(**data)

    # -- namespaces -------------------------------------------------------------

    def netns(self, name: str) -> str:
        """Create netns `name` (loopback up), recorded first so a failure still removes it."""
        self.namespaces.append(name)
        self.save()
        return add_netns(name)

    def delete_netns(self, name: str) -> None:
        run(["ip", "netns", "del", name], timeout=10, check=False)
        if name in self.namespaces:
            self.namespaces.remove(name)
            self.save()

    # -- processes ----------------------------------------------------------------

    def spawn(self, netns: str | None, argv: list[str], cpu: int | None = None,
              marker: str | None = None, **popen: Any) -> subprocess.Popen:
        """Start argv in `netns` in its own session, recorded with `marker` (default argv[0])."""
        # WG_PROCESS_FOREGROUND=0 makes some wireguard-go versions re-fork without end.
        env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
        proc = subprocess.Popen(in_ns(netns, argv, cpu), start_new_session=True,
                                env=popen.pop("env", env), **popen)
        self.processes.append([proc.pid, marker or argv[0]])
        self.save()
        return proc

    def end(self, pid: int, timeout: float = 3.0) -> None:
        """End a recorded process (if it still is the one recorded) and forget it."""
        for entry in [e for e in self.processes if e[0] == pid]:
            end_process(pid, entry[1], timeout)
        self.forget(pid)

    def forget(self, pid: int) -> None:
        """A recorded process exited by itself (and was waited for)."""
        self.processes = [e for e in self.processes if e[0] != pid]
        self.save()

    def start_wireguard_go(self, netns: str, dev: str, cpu: int | None = None,
                           lifetime: float | None = None, timeout: float = 10.0) -> int:
        """`wireguard-go -f dev` in netns; waits for its UAPI socket; returns its PID.

        lifetime: ended by `timeout` after that many seconds whatever happens to us
        (its PID is then `timeout`'s).
        """
        argv = ["wireguard-go", "-f", dev]
        if lifetime is not None:
            argv = ["timeout", "-k", "5", f"{lifetime:g}", *argv]
        log = Path(self.workdir) / f"{dev}.log"
        with open(log, "wb") as out:
            proc = self.spawn(netns, argv, cpu, marker=dev, stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT)
        sock = WG_SOCKET_DIR / f"{dev}.sock"
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.end(proc.pid)
                text = log.read_text(errors="replace").strip()
                raise LabError(f"wireguard-go {dev} did not start: {text[-300:] or 'no output'}")
            time.sleep(0.05)
        return proc.pid

    # -- removal ------------------------------------------------------------------

    def remove(self, natgw_down: Callable[[str, str], object]) -> None:
        """Remove the run: processes by PID, gateways (natgw_down(netns, config or
        name)), namespaces, work directory and record."""
        for pid, marker in list(self.processes):
            end_process(pid, marker)
        for cfg, netns in self.gateways.items():
            natgw_down(netns, cfg)
        for netns in self.namespaces:
            run(["ip", "netns", "del", netns], timeout=10, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.path.unlink(missing_ok=True)
