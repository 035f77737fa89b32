"""How long natgw's read-only commands take, wall time, as a user runs them.

    .venv/bin/python -m bench.cli_latency            # 30 runs each, BENCHMARKS.md updated
    .venv/bin/python -m bench.cli_latency --runs 10 --no-write

It builds a small live gateway in a network namespace of its own (an
`interface:` peer on a veth pair and a wireguard-go tunnel peer whose
endpoint never answers; nothing leaves the namespace), runs every read-only
command against it through the installed `natgw` console script, and
removes everything in `finally`. Commands run interleaved, round after
round, so a change in the machine's load hits all of them alike; the
interpreter's own start (`python -c pass`) is measured the same way as the
floor. It is a benchmark, not a test: it asserts only that each command
answers correctly, never how fast.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NATGW = str(Path(sys.executable).parent / "natgw")
MARK_BEGIN = "<!-- cli-latency:begin -->"
MARK_END = "<!-- cli-latency:end -->"
TARGET_MS = 150


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _natgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NATGW, *args], capture_output=True, text=True, timeout=600)


class Lab:
    """One netns with a veth pair, a key, a cluster.yaml, and the gateway up in it."""

    def __init__(self, workdir: Path) -> None:
        self.prefix = f"cl{secrets.token_hex(3)}"  # run-unique: other runs share the host
        self.netns = f"{self.prefix}ns"
        self.gateway = f"{self.prefix}gw"
        self.workdir = workdir
        self.config = workdir / "cluster.yaml"
        self._netns_made = False
        self._up = False

    def start(self) -> None:
        from natgw import keys  # noqa: PLC0415

        _ip("netns", "add", self.netns)
        self._netns_made = True
        veth, peer_end = f"{self.prefix}va", f"{self.prefix}vb"
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "link", "add", veth, "type", "veth", "peer", "name", peer_end)
        for dev in (veth, peer_end):
            _ip("-n", self.netns, "link", "set", dev, "up")
        # The key file is private from its creation, never chmod-ed afterwards.
        fd = os.open(self.workdir / "gw.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys.genkey() + "\n")
        self.config.write_text(f"""\
name: {self.gateway}
cidrs: [10.244.0.0/16]
privateKeyFile: gw.key
engine: wireguard-go
peers:
  - name: lab
    interface: {veth}
    remote: [{{cidr: 10.244.0.0/16, as: 10.247.0.0/16}}]
  - name: tunnel
    device: {self.prefix}wg
    publicKey: {keys.pubkey(keys.genkey())}
    endpoint: 192.0.2.1:51820
    listenPort: 51820
    remote: [{{cidr: 10.244.0.0/16, as: 10.245.0.0/16}}]
""")
        self._up = True  # from here on, `down` has something to remove
        r = _natgw("--netns", self.netns, "up", str(self.config), "--detach")
        if r.returncode != 0:
            raise RuntimeError(f"natgw up failed: {r.stderr.strip()}")

    def stop(self) -> None:
        if self._up:
            r = _natgw("--netns", self.netns, "down", self.gateway)
            if r.returncode != 0:
                print(f"cli_latency: natgw down: {r.stderr.strip()}", file=sys.stderr)
        if self._netns_made:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)

    def commands(self) -> list[tuple[str, list[str], str]]:
        """(label, argv, text the output must contain) of every read-only command."""
        ns, gw = ["--netns", self.netns], self.gateway
        return [
            ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"], ""),
            ("natgw version", [NATGW, "version"], "."),
            ("natgw check FILE", [NATGW, "check", str(self.config)], ": ok (2 peers)"),
            ("natgw status", [NATGW, *ns, "status"], f"gateway: {gw}"),
            ("natgw status GATEWAY --json", [NATGW, *ns, "status", gw, "--json"],
             '"engine": "wireguard-go"'),
            ("natgw maps", [NATGW, *ns, "maps"], f"gateway {gw}"),
            ("natgw maps GATEWAY --json", [NATGW, *ns, "maps", gw, "--json"],
             '"label": "remote:10.247.0.0/16"'),
            ("natgw lookup ADDRESS", [NATGW, *ns, "lookup", "10.247.3.4"], "10.244.3.4"),
        ] + _reference()


def _env() -> dict[str, str]:
    # As installed from a wheel: natgw's modules are byte-compiled (pip does it
    # at install), not compiled from source at every start.
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _reference() -> list[tuple[str, list[str], str]]:
    """Import floors beside the commands.

    typer alone is what every command pays for its command line. typer with
    pydantic is what every command would pay on typer 0.26+, which coerces
    each parameter through pydantic: why pyproject.toml pins typer below 0.26
    (the pinned typer does not import pydantic).
    """
    return [("python -c 'import typer' (reference: the pinned typer alone)",
             [sys.executable, "-c", "import typer; print('ok')"], "ok"),
            ("python -c 'import typer, pydantic' (reference: what typer 0.26+ imports)",
             [sys.executable, "-c", "import typer, pydantic; print('ok')"], "ok")]


def measure(commands: list[tuple[str, list[str], str]],
            runs: int) -> dict[str, tuple[list[float], list[float]]]:
    """(wall seconds, CPU seconds) of each command, `runs` times, interleaved round by round.

    CPU time (user + system of the command's process) is what the command
    costs; wall time adds waiting for a CPU, which on a shared machine can
    dwarf it. On an idle machine the two are close: these commands do not sleep.
    """
    import natgw  # noqa: PLC0415

    env = _env()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(natgw.__file__).parent)],
                   check=True, env=env)
    for label, argv, expect in commands:  # warm-up, and each answers correctly
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        if r.returncode != 0 or expect not in r.stdout:
            raise RuntimeError(f"{label}: exit {r.returncode}, stdout {r.stdout[:200]!r}, "
                               f"stderr {r.stderr.strip()!r}")
    times: dict[str, tuple[list[float], list[float]]] = {
        label: ([], []) for label, _, _ in commands}
    for i in range(runs):
        # Rotate the order each round: no command always runs first after a pause.
        k = i % len(commands)
        for label, argv, _ in commands[k:] + commands[:k]:
            cpu, t = _child_cpu(), time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=True, timeout=120, env=env)
            times[label][0].append(time.perf_counter() - t)
            times[label][1].append(_child_cpu() - cpu)
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def render(times: dict[str, tuple[list[float], list[float]]], runs: int,
           load: tuple[str, str]) -> str:
    ms = lambda s: f"{s * 1000:.0f}"  # noqa: E731
    lines = [
        MARK_BEGIN,
        "<!-- generated by `python -m bench.cli_latency`; edit outside the markers -->",
        "",
        f"{runs} runs of each command, interleaved, through the installed console script "
        "(modules byte-compiled, as a wheel install leaves them), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {load[0]} at the start and {load[1]} at the end. Wall: fork to "
        "exit. CPU: user + system time of the command's process.",
        "",
        "| command | wall median ms | wall p90 ms | wall min ms | CPU median ms | "
        "CPU p90 ms | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, (wall, cpu) in times.items():
        target = "" if not label.startswith("natgw") else f"< {TARGET_MS} ms"
        lines.append(f"| `{label}` | {ms(statistics.median(wall))} | {ms(p90(wall))} | "
                     f"{ms(min(wall))} | {ms(statistics.median(cpu))} | {ms(p90(cpu))} | "
                     f"{target} |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_section(path: Path, section: str, heading: str) -> None:
    """Replace the marked section of `path`, or append it under `heading`."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{section}\n"
    path.write_text(text)


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cli_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    ap.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md",
                    help="file whose cli-latency section is rewritten")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("cli_latency: needs root and iproute2 (it builds a network namespace)",
              file=sys.stderr)
        return 1
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"natgw-cli-latency-{os.getpid()}"
    workdir.mkdir(mode=0o700)
    lab = Lab(workdir)
    try:
        lab.start()
        start_load = _load()
        times = measure(lab.commands(), args.runs)
        load = (start_load, _load())
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    section = render(times, args.runs, load)
    print(section)
    if not args.no_write:
        write_section(args.markdown, section, "## CLI latency (read-only commands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
