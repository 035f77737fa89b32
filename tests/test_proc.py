"""natgw.proc.end_process: ends the process we started, and only that one."""

from __future__ import annotations

import subprocess
import sys

from natgw import proc


def _sleeper(marker: str, ignore_sigterm: bool = False) -> subprocess.Popen:
    """A running child (its command line is in place: right after exec it is empty)."""
    code = ("import signal, time; "
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_sigterm else "")
            + "print(flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    child.stdout.readline()
    return child


def test_ends_the_process_carrying_the_marker_and_reaps_it():
    with _sleeper("marker-a") as child:
        assert proc.end_process(child.pid, "marker-a", timeout=5)
        assert proc.state(child.pid) is None  # gone, not a zombie: reaped


def test_leaves_a_process_without_the_marker_alone():
    with _sleeper("marker-b") as child:
        try:
            assert proc.end_process(child.pid, "another-process", timeout=5)
            assert child.poll() is None
            assert proc.argv(child.pid)[-1] == "marker-b"
        finally:
            child.kill()


def test_kills_a_process_that_ignores_sigterm():
    with _sleeper("stubborn", ignore_sigterm=True) as child:
        assert proc.end_process(child.pid, "stubborn", timeout=0.2)
        assert proc.state(child.pid) is None


def test_a_gone_process_is_fine():
    with _sleeper("marker-gone") as child:
        child.kill()
        child.wait()
        assert proc.end_process(child.pid, "marker-gone")
