"""`natgw maps` and `natgw lookup`: output, JSON, --watch, --netns and exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_introspect import PEER, RA, Loaded, expected_deltas, loaded_gateway, send_traffic
from typer.testing import CliRunner

from natgw import state
from natgw.cli import app
from natgw.state import GatewayState, PeerState

NATGW = Path(sys.executable).parent / "natgw"
runner = CliRunner()


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Loaded]:
    yield from loaded_gateway("cli", tmp_path_factory.mktemp("state"))


def natgw(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def counters(doc: list[dict], gateway: str) -> dict[tuple[str, str], tuple[int, int]]:
    (g,) = [g for g in doc if g["gateway"] == gateway]
    (dev,) = g["devices"]
    return {(m["label"], d): (m[d]["packets"], m[d]["bytes"])
            for m in dev["mappings"] for d in ("egress", "ingress")}


def drops(doc: list[dict], gateway: str) -> dict[str, int]:
    (g,) = [g for g in doc if g["gateway"] == gateway]
    return g["devices"][0]["drops"]


# -- maps ----------------------------------------------------------------------


@pytest.mark.bpf
def test_maps_json_counts_exactly_the_traffic(gw):
    code, out, _ = natgw("maps", gw.gateway, "--json")
    assert code == 0
    before = json.loads(out)
    send_traffic(gw.dp)
    # The installed command, as a user runs it: same numbers, no compiler needed.
    proc = subprocess.run([str(NATGW), "maps", gw.gateway, "--json"], capture_output=True,
                          text=True, timeout=30, env=os.environ)
    assert (proc.returncode, proc.stderr) == (0, "")
    after = json.loads(proc.stdout)
    want, stats = expected_deltas()
    b, a = counters(before, gw.gateway), counters(after, gw.gateway)
    assert {k: (a[k][0] - b[k][0], a[k][1] - b[k][1]) for k in a} == want
    assert drops(after, gw.gateway)["truncated"] - drops(before, gw.gateway)["truncated"] == \
        stats["truncated"]
    assert after[0]["devices"][0]["peer"] == PEER


@pytest.mark.bpf
def test_maps_without_gateway_lists_every_loaded_one(gw):
    code, out, _ = natgw("maps", "--json")
    assert code == 0
    assert gw.gateway in [g["gateway"] for g in json.loads(out)]


@pytest.mark.bpf
def test_maps_text(gw):
    send_traffic(gw.dp)  # nonzero counters to show
    (doc,) = json.loads(natgw("maps", gw.gateway, "--json")[1])
    dev = doc["devices"][0]
    code, out, _ = natgw("maps", gw.gateway)
    assert code == 0
    lines = out.splitlines()
    remote = next(m for m in dev["mappings"] if m["label"] == "remote:10.245.0.0/16")
    assert re.match(r"^    egress\s+remote\s+dst\s+10\.245\.0\.0/16\s+->\s+10\.244\.0\.0/16\s+"
                    rf"packets {remote['egress']['packets']}\s+bytes {remote['egress']['bytes']}$",
                    lines[2])
    assert remote["egress"]["packets"] > 0
    assert lines[-2] == "    drops    " + "  ".join(f"{n} {c}" for n, c in dev["drops"].items())
    assert lines[-1] == "    events   " + "  ".join(f"{n} {c}" for n, c in dev["events"].items())
    assert lines[0] == f"gateway {gw.gateway} build {gw.dp.programs.build}"
    assert lines[1] == f"  dev lo ifindex 1 peer {PEER}"
    # Per direction: kind, side, match -> rewrite, counters.
    for pattern in (
        r"^    ingress\s+remote\s+src\s+10\.244\.0\.0/16\s+->\s+10\.245\.0\.0/16\s+packets \d+",
        r"^\s+local\s+dst\s+10\.246\.0\.0/16\s+->\s+10\.244\.0\.0/16\s+packets \d+",
        r"^\s+local\s+src\s+10\.244\.0\.0/16\s+->\s+10\.246\.0\.0/16\s+packets \d+",
    ):
        assert any(re.match(pattern, line) for line in lines), (pattern, out)


def test_maps_text_shows_fast_path_decisions():
    from natgw import introspect as I
    from natgw.cli.maps import render_maps
    from natgw.dataplane import layout as L

    fast = {name: i for i, name in enumerate(L.FAST_NAMES.values())}
    lan = I.DeviceReport(3, "eth0", None, (), {}, lan=True, fastpath=fast)
    peer = I.DeviceReport(5, "c1-c2", "c2", (), {"unmatched": 1}, fastpath={"redirect_eth": 4})
    out = render_maps([I.GatewayReport("gw", None, "abc", (lan, peer))]).splitlines()
    assert out[1:3] == ["  dev eth0 ifindex 3  (LAN, fast path)",
                        "    fastpath " + "  ".join(f"{n} {c}" for n, c in fast.items())]
    assert out[-1] == "    fastpath  redirect_eth 4"


@pytest.mark.bpf
def test_maps_netns_filter_uses_the_state(gw, netns_lab):
    ns, other = netns_lab.netns("g"), netns_lab.netns("o")
    saved = state.load_state(gw.gateway)
    state.save_state(GatewayState(gw.gateway, ns, "/c.yaml",
                                  [PeerState(PEER, "lo", 1, "interface")]))
    try:
        code, out, _ = natgw("--netns", ns, "maps", "--json")
        (doc,) = [g for g in json.loads(out) if g["gateway"] == gw.gateway]
        assert (code, doc["netns"], doc["devices"][0]["ifname"]) == (0, ns, "lo")
        code, out, _ = natgw("--netns", other, "maps", "--json")
        assert code == 0
        assert gw.gateway not in [g["gateway"] for g in json.loads(out)]
    finally:
        state.save_state(saved)


def test_maps_with_nothing_loaded_says_so(netns_lab):
    ns = netns_lab.netns("m")  # a fresh netns: no gateway can be loaded in it
    assert natgw("--netns", ns, "maps") == (0, f"no natgw gateway is loaded in netns {ns}\n", "")
    assert natgw("--netns", ns, "maps", "--json") == (0, "[]\n", "")
    code, out, _ = natgw("--netns", ns, "maps", "--watch", "--count", "1")
    assert code == 0 and out.endswith(f"\nno natgw gateway is loaded in netns {ns}\n\n")


@pytest.mark.bpf
def test_watch_json_prints_one_object_per_refresh(gw):
    code, out, _ = natgw("maps", gw.gateway, "--watch", "--json", "--count", "2",
                         "--interval", "0.1")
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["interval"] == 0.1
    keys = {(r["mapping"], r["direction"]) for r in first["rates"]}
    assert keys == set(expected_deltas()[0])
    assert all(r["packets_per_second"] is None for r in first["rates"])
    # Nothing ran through the programs between the two reads.
    assert all(r["packets_per_second"] == 0 and r["bytes_per_second"] == 0
               for r in second["rates"])


@pytest.mark.bpf
def test_watch_text_shows_rates(gw):
    code, out, _ = natgw("maps", gw.gateway, "--watch", "--count", "2", "--interval", "0.1")
    assert code == 0
    frames = out.split("natgw maps: every 0.1s, Ctrl-C to stop")
    assert len(frames) == 3 and frames[0] == ""
    assert re.search(r"egress\s+remote\s+dst\s+10\.245\.0\.0/16\s+->\s+10\.244\.0\.0/16\s+-\s+-",
                     frames[1])
    assert re.search(r"remote\s+dst\s+10\.245\.0\.0/16\s+->\s+10\.244\.0\.0/16\s+"
                     r"0\.0 pkt/s\s+0\.0 bit/s", frames[2])


@pytest.mark.bpf
def test_watch_stops_on_ctrl_c_with_exit_0(gw):
    proc = subprocess.Popen([str(NATGW), "maps", gw.gateway, "--watch", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ)
    try:
        assert proc.stdout.readline().startswith("natgw maps: every 0.2s")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, "")


@pytest.mark.bpf
def test_ctrl_c_during_a_read_lets_it_finish_then_stops_with_exit_0(gw, monkeypatch):
    # Ctrl-C is taken at the watch's next pause, not raised inside a read (bpf(2),
    # netlink), which an exception may not unwind cleanly.
    from natgw import introspect  # noqa: PLC0415

    real, reads = introspect.read_gateway, []

    def read_then_interrupted(*args, **kwargs):
        report = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while the read is still running
        for _ in range(1000):  # bytecodes enough for a KeyboardInterrupt to be raised
            pass
        reads.append(report)
        return report

    monkeypatch.setattr(introspect, "read_gateway", read_then_interrupted)
    previous = signal.getsignal(signal.SIGINT)
    result = runner.invoke(app, ["maps", gw.gateway, "--watch", "--interval", "5"])
    assert (result.exit_code, len(reads)) == (0, 1)  # the read finished; no 5 s pause
    assert result.output.startswith("natgw maps: every 5s")
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back


# -- lookup --------------------------------------------------------------------


@pytest.mark.bpf
def test_lookup_mapped_ipv4(gw):
    code, out, _ = natgw("lookup", RA, "--gateway", gw.gateway)
    assert code == 0
    assert re.fullmatch(
        rf"egress\s+dst\s+{RA}\s+->\s+10\.244\.3\.4\s+remote 10\.244\.0\.0/16 as "
        rf"10\.245\.0\.0/16\s+dev lo ifindex 1 peer {PEER}\s+gateway {gw.gateway}\n", out)
    code, out, _ = natgw("lookup", RA, "--json")
    mine = [t for t in json.loads(out) if t["gateway"] == gw.gateway]
    assert code == 0
    assert [(t["direction"], t["side"], t["translated"], t["peer"]) for t in mine] == [
        ("egress", "dst", "10.244.3.4", PEER)]


@pytest.mark.bpf
def test_lookup_ipv6(gw):
    code, out, _ = natgw("lookup", "fd00:a::12", "--json", "--gateway", gw.gateway)
    assert code == 0
    assert [(t["direction"], t["side"], t["kind"], t["translated"]) for t in json.loads(out)] \
        == [("egress", "src", "local", "fd00:c::12"), ("ingress", "src", "remote", "fd00:b::12")]


@pytest.mark.bpf
def test_lookup_unmapped(gw):
    code, out, _ = natgw("lookup", "198.51.100.7", "--gateway", gw.gateway)
    assert (code, out) == (0, "198.51.100.7: not translated (no natgw mapping matches it)\n")
    code, out, _ = natgw("lookup", "198.51.100.7", "--gateway", gw.gateway, "--json")
    assert (code, json.loads(out)) == (0, [])


# -- errors: one line on stderr, exit 2 for bad input, 1 for the system's state --

ERRORS = [
    (["lookup", "10.1.1"], 2, "natgw: '10.1.1': not an IPv4 or IPv6 address\n"),
    (["lookup", "10.1.1.1", "--gateway", "../x"], 2,
     "natgw: gateway name '../x': use letters, digits, '.', '_', '-'\n"),
    (["maps", "--count", "2"], 2, "natgw: --count only applies to --watch\n"),
    (["maps", "a/b"], 2, "natgw: gateway name 'a/b': use letters, digits, '.', '_', '-'\n"),
    (["maps", "natgw-test-absent"], 1, "natgw: gateway natgw-test-absent: not loaded "
     "(no maps in /sys/fs/bpf/natgw/natgw-test-absent)\n"),
    (["--netns", "natgw-test-absent", "maps"], 1,
     "natgw: netns natgw-test-absent: does not exist\n"),
    (["--netns", "natgw-test-absent", "lookup", "10.1.1.1"], 1,
     "natgw: netns natgw-test-absent: does not exist\n"),
]


@pytest.mark.parametrize(("args", "code", "err"), ERRORS, ids=[" ".join(a) for a, _, _ in ERRORS])
def test_errors(args, code, err):
    assert natgw(*args) == (code, "", err)


def test_bad_interval_is_a_usage_error():
    code, _, err = natgw("maps", "--watch", "--interval", "0")
    assert code == 2 and "--interval" in err
