"""natgw.proc.end_process: ends the process we started, and only that one."""

from __future__ import annotations

import subprocess
import sys

from natgw import proc


def _sleeper(*extra: str) -> subprocess.Popen:
    """A child that runs (its command line is in place: right after exec it is empty)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); "
                              "time.sleep(60)", *extra], stdout=subprocess.PIPE)
    child.stdout.readline()
    return child


def test_ends_the_process_carrying_the_marker_and_reaps_it():
    child = _sleeper("marker-a")
    assert proc.end_process(child.pid, "marker-a", timeout=5)
    assert proc.state(child.pid) is None  # gone, not a zombie: reaped
    child.communicate()  # (Popen learns it is gone)


def test_leaves_a_process_without_the_marker_alone():
    child = _sleeper("marker-b")
    try:
        assert proc.end_process(child.pid, "another-process", timeout=5)
        assert child.poll() is None
        assert proc.argv(child.pid)[-1] == "marker-b"
    finally:
        child.kill()
        child.wait()


def test_kills_a_process_that_ignores_sigterm():
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, sys, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print(flush=True); time.sleep(60)",
                              "stubborn"], stdout=subprocess.PIPE)
    child.stdout.readline()  # SIGTERM is ignored from here on
    assert proc.end_process(child.pid, "stubborn", timeout=0.2)
    assert proc.state(child.pid) is None
    child.communicate()


def test_a_gone_process_is_fine():
    child = _sleeper("marker-gone")
    child.kill()
    child.communicate()
    assert proc.end_process(child.pid, "marker-gone")
