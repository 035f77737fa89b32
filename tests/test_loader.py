"""The loader loads and pins only the programs a gateway attaches, and the others when needed."""

from __future__ import annotations

import os

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
