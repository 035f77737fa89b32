"""The loader loads and pins only the programs a gateway attaches, and the others when needed."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from bpf_run import run_gateway_name

from natgw.dataplane import Dataplane
from natgw.dataplane import bpfsys as B
from natgw.dataplane import layout as L
from natgw.dataplane.loader import _PROG_PIN_RE, missing_pins, programs_for

pytestmark = pytest.mark.bpf


def pinned_programs(pdir: str) -> set[str]:
    return {m.group(1) for m in map(_PROG_PIN_RE.match, os.listdir(pdir)) if m}


def map_id(pdir: str, name: str) -> int:
    fd = B.obj_get(os.path.join(pdir, name))
    try:
        return B.map_info(fd).id
    finally:
        os.close(fd)


def test_a_gateway_pins_only_the_programs_it_attaches_and_gains_the_fast_path_later():
    slow, fast = programs_for(False), programs_for(True)
    dp = Dataplane.load(run_gateway_name() + "l", need=slow)
    try:
        pdir = dp.pin_dir
        assert pinned_programs(pdir) == {"egress", "ingress"}
        assert missing_pins(pdir, slow) == []
        # The fast path's programs (and only their map) are what a fast gateway lacks.
        assert set(missing_pins(pdir, fast)) == {"prog_ingress_fast", "prog_lan"} | (
            {L.MAP_FAST_STATS} - set(os.listdir(pdir)))
        before = map_id(pdir, L.MAP_NAMES[0])

        again = Dataplane.load(dp.gateway, need=fast)
        try:
            # A new build of what it attaches (the hooks still hold the old programs).
            assert pinned_programs(pdir) == set(fast)
            assert missing_pins(pdir, fast) == []
            # Built against the pinned maps: the tables (and their mappings) stay.
            assert map_id(pdir, L.MAP_NAMES[0]) == before
            assert set(again.programs.fds) == set(fast)
        finally:
            again.close()
    finally:
        dp.destroy()


def bpftool_show(kind: str, pin: str) -> dict:
    out = subprocess.run(["bpftool", "-j", kind, "show", "pinned", pin], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("btf", ["1", "0"])
def test_the_dataplane_carries_btf_unless_told_not_to(monkeypatch, btf):
    """The product's programs and maps carry BTF (bpftool prints maps as structs);
    NATGW_BPF_BTF=0, which make test sets to compile faster, leaves it out."""
    if btf == "1":
        monkeypatch.delenv("NATGW_BPF_BTF", raising=False)
    else:
        monkeypatch.setenv("NATGW_BPF_BTF", "0")
    dp = Dataplane.load(run_gateway_name() + "b" + btf, need=("egress",))
    try:
        prog = bpftool_show("prog", dp.programs.pin("egress"))
        xlate = bpftool_show("map", os.path.join(dp.pin_dir, L.MAP_NAMES[0]))
        assert ("btf_id" in prog) == (btf == "1")
        assert ("btf_id" in xlate) == (btf == "1")
    finally:
        dp.destroy()
