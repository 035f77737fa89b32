"""udpgen, the benchmark's UDP flood generator: compiled on first use with gcc.

trafgen (netsniff-ng) aborts with "Flushing TX_RING failed: Resource temporarily
unavailable" as soon as the path is saturated (its TX_RING socket's send buffer
fills and it treats EAGAIN as fatal; only its option to raise the *global*
net.core.wmem sysctls avoids that), hping3 reaches a fraction of the rate and
cannot vary the source address, and the kernel has no pktgen. So: a 200-line C
sender with blocking sendmmsg() on an AF_PACKET socket, see udpgen.c.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("udpgen.c")
CACHE = Path("/run/natgw/bench/bin")


class GeneratorError(Exception):
    pass


def binary() -> Path:
    """Path of the compiled udpgen (built once per source version)."""
    src = SOURCE.read_bytes()
    out = CACHE / f"udpgen-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise GeneratorError("no C compiler: install gcc (make setup does)")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise GeneratorError(f"compiling udpgen failed: {r.stderr.strip()[:500]}")
    tmp.replace(out)
    return out


def argv(dev: str, dst_mac: str, src_mac: str, src: str, dst: str, sport: int, dport: int,
         payload: int, seconds: float, new_flow: bool) -> list[str]:
    return [str(binary()), dev, dst_mac, src_mac, src, dst, str(sport), str(dport),
            str(payload), f"{seconds:.2f}", "1" if new_flow else "0"]
