"""C and Python agree on every shared constant and map layout.

bpf/natgw_shared.h is the source of truth; src/natgw/dataplane/layout.py
mirrors it. The structs are compared with what clang actually laid out (bcc's
view of the compiled maps), the constants with the header's #defines.
"""

from __future__ import annotations

import ctypes
import re
import shutil

import pytest

from natgw.dataplane import layout
from natgw.dataplane.loader import bpf_dir, inline_source, pin_dir

HEADER = bpf_dir() / "natgw_shared.h"
MAP_STRUCTS = {  # map -> (C key struct, C value struct) by their Python mirrors
    layout.MAP_XLATE_V4: (layout.XlateV4Key, layout.Xlate),
    layout.MAP_XLATE_V6: (layout.XlateV6Key, layout.Xlate),
    layout.MAP_DEVICES: (ctypes.c_uint32, layout.Device),
    layout.MAP_MAP_STATS: (ctypes.c_uint32, layout.Counter),
    layout.MAP_DEV_STATS: (ctypes.c_uint32, ctypes.c_uint64),
    layout.MAP_FAST_STATS: (ctypes.c_uint32, ctypes.c_uint64),
    layout.MAP_XDP_TX: (ctypes.c_uint32, ctypes.c_uint32),
    layout.MAP_XDP_MACS: (ctypes.c_uint32, layout.Mac),
    layout.MAP_XLATE_V4_SKIP: (ctypes.c_uint32, ctypes.c_uint64),
}


def header_defines() -> dict[str, int]:
    """Object-like NATGW_* macros of the shared header, evaluated."""
    raw = {}
    for name, value in re.findall(r"^#define[ \t]+NATGW_(\w+)[ \t]+([^/\n]+)", HEADER.read_text(),
                                  re.M):
        if name.endswith("_H") or "(" in name:
            continue
        raw[name] = value.strip()
    out: dict[str, int] = {}
    for name, value in raw.items():
        expr = re.sub(r"NATGW_(\w+)", lambda m: str(out[m.group(1)]), value)
        out[name] = int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - our own header
    return out


def test_every_constant_agrees():
    defines = header_defines()
    assert len(defines) > 15
    for name, value in defines.items():
        assert getattr(layout, name) == value, f"NATGW_{name}"


def test_table_index_agrees():
    assert "#define NATGW_TABLE(dir, side)\t((dir) * 2 + (side))" in HEADER.read_text()
    for d in (layout.DIR_EGRESS, layout.DIR_INGRESS):
        for s in (layout.SIDE_DST, layout.SIDE_SRC):
            assert layout.table(d, s) == d * 2 + s


def test_every_drop_and_event_has_a_name():
    assert set(layout.DEV_STAT_NAMES) == set(range(layout.DEV_STAT_MAX))
    assert len(set(layout.DEV_STAT_NAMES.values())) == layout.DEV_STAT_MAX
    drops = {v for k, v in header_defines().items() if k.startswith("DROP_")}
    assert set(layout.DROP_REASONS) == drops


def test_every_fast_path_decision_has_a_name():
    reasons = {k: v for k, v in header_defines().items()
               if k.startswith("FAST_") and k != "FAST_MAX"}
    assert set(layout.FAST_NAMES) == set(reasons.values())
    assert len(set(layout.FAST_NAMES.values())) == len(layout.FAST_NAMES)
    assert max(layout.FAST_NAMES) < layout.FAST_MAX
    assert set(layout.FAST_REDIRECTS) == {reasons["FAST_REDIRECT_L3"], reasons["FAST_REDIRECT_ETH"],
                                          reasons["FAST_REDIRECT_PEER"],
                                          reasons["FAST_XDP_REDIRECT"]}


def fields(ctype) -> list[tuple[str, int, int]]:
    if not hasattr(ctype, "_fields_"):
        return [("", 0, ctypes.sizeof(ctype))]
    return [(f[0], getattr(ctype, f[0]).offset, getattr(ctype, f[0]).size)
            for f in ctype._fields_]


@pytest.mark.bpf
def test_struct_layouts_match_compiled_maps():
    from bcc import BPF

    gateway = "layoutcheck"
    pdir = pin_dir(gateway)
    try:
        bpf = BPF(text=inline_source().encode(), cflags=[f'-DNATGW_PIN_DIR="{pdir}"'])
        for name, (key, value) in MAP_STRUCTS.items():
            table = bpf[name.encode()]
            assert ctypes.sizeof(table.Key) == ctypes.sizeof(key), name
            # Per-CPU maps: bcc's Leaf is the array of all CPUs, sLeaf one value.
            leaf = getattr(table, "sLeaf", table.Leaf)
            assert ctypes.sizeof(leaf) == ctypes.sizeof(value), name
            assert fields(table.Key) == fields(key), f"{name} key"
            assert fields(leaf) == fields(value), f"{name} value"
        bpf.cleanup()
    finally:
        shutil.rmtree(pdir, ignore_errors=True)
