"""natgw's own bpf(2) layouts and numbers (bpfsys: tcx links) against the running kernel's
BTF, as bpftool dumps it: a wrong offset would make the kernel read another field."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from functools import cache

import pytest

from natgw.dataplane import bpfsys as B
from natgw.dataplane.hooks import tcx_available

VMLINUX = "/sys/kernel/btf/vmlinux"

# ctypes structure -> (BTF type it mirrors, the member path of each of its fields)
LAYOUTS = [
    (B._LinkCreateAttr, "bpf_attr", {
        "prog_fd": "link_create.prog_fd", "target_ifindex": "link_create.target_ifindex",
        "attach_type": "link_create.attach_type", "flags": "link_create.flags",
        "relative_fd": "link_create.tcx.relative_fd",
        "expected_revision": "link_create.tcx.expected_revision"}),
    (B._LinkUpdateAttr, "bpf_attr", {
        "link_fd": "link_update.link_fd", "new_prog_fd": "link_update.new_prog_fd",
        "flags": "link_update.flags", "old_prog_fd": "link_update.old_prog_fd"}),
    (B._LinkDetachAttr, "bpf_attr", {"link_fd": "link_detach.link_fd"}),
    (B._GetFdByIdAttr, "bpf_attr", {"link_id": "link_id", "next_id": "next_id",
                                    "open_flags": "open_flags"}),
    (B._QueryAttr, "bpf_attr", {
        f: f"query.{f}" for f in ("target_ifindex", "attach_type", "query_flags",
                                  "attach_flags", "prog_ids", "count", "prog_attach_flags",
                                  "link_ids", "link_attach_flags", "revision")}),
    (B._LinkInfo, "bpf_link_info", {"type": "type", "id": "id", "prog_id": "prog_id",
                                    "ifindex": "tcx.ifindex",
                                    "attach_type": "tcx.attach_type"}),
]

CONSTANTS = [  # (enum, enumerator, bpfsys's value)
    ("bpf_cmd", "BPF_PROG_QUERY", B.BPF_PROG_QUERY),
    ("bpf_cmd", "BPF_LINK_CREATE", B.BPF_LINK_CREATE),
    ("bpf_cmd", "BPF_LINK_UPDATE", B.BPF_LINK_UPDATE),
    ("bpf_cmd", "BPF_LINK_GET_FD_BY_ID", B.BPF_LINK_GET_FD_BY_ID),
    ("bpf_cmd", "BPF_LINK_DETACH", B.BPF_LINK_DETACH),
    ("bpf_attach_type", "BPF_TCX_INGRESS", B.BPF_TCX_INGRESS),
    ("bpf_attach_type", "BPF_TCX_EGRESS", B.BPF_TCX_EGRESS),
    ("bpf_link_type", "BPF_LINK_TYPE_TCX", B.BPF_LINK_TYPE_TCX),
]

_TYPE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)")
_SIZE = re.compile(r"\bsize=(\d+)")
_REF = re.compile(r"(?<![_a-z])type_id=(\d+)")
_ENUMERATOR = re.compile(r"^\t'([^']*)' val=(-?\d+)")


@cache
def btf() -> dict[int, dict]:
    """type id -> {kind, name, size, type_id, members: [(name, type id, bit offset)],
    values: {enumerator: value}} from `bpftool btf dump ... format raw`."""
    if shutil.which("bpftool") is None:
        pytest.skip("needs bpftool")
    try:
        out = subprocess.run(["bpftool", "btf", "dump", "file", VMLINUX, "format", "raw"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no kernel BTF at {VMLINUX}")
    types: dict[int, dict] = {}
    cur: dict = {}
    for line in out.splitlines():
        if m := _TYPE.match(line):
            size, ref = _SIZE.search(m.group(4)), _REF.search(m.group(4))
            cur = {"kind": m.group(2), "name": m.group(3), "members": [], "values": {},
                   "size": int(size.group(1)) if size else 0,
                   "type_id": int(ref.group(1)) if ref else 0}
            types[int(m.group(1))] = cur
        elif m := _MEMBER.match(line):
            cur["members"].append((m.group(1), int(m.group(2)), int(m.group(3))))
        elif m := _ENUMERATOR.match(line):
            cur["values"][m.group(1)] = int(m.group(2))
    return types


def named(kind: str, name: str) -> dict:
    return next(t for t in btf().values() if t["kind"] == kind and t["name"] == name)


def size_of(type_id: int) -> int:
    t = btf()[type_id]
    while t["kind"] in ("TYPEDEF", "VOLATILE", "CONST"):
        t = btf()[t["type_id"]]
    return t["size"]


def find(type_id: int, name: str) -> tuple[int, int] | None:
    """(byte offset, type id) of member `name`, looking into anonymous members too."""
    for mname, tid, bits in btf()[type_id]["members"]:
        if mname == name:
            return bits // 8, tid
    for mname, tid, bits in btf()[type_id]["members"]:
        if mname == "(anon)" and (inner := find(tid, name)) is not None:
            return bits // 8 + inner[0], inner[1]
    return None


def offset(root: str, path: str) -> tuple[int, int]:
    """(byte offset, byte size) of a member path like link_create.tcx.expected_revision."""
    tid = next(i for i, t in btf().items() if t["kind"] in ("STRUCT", "UNION")
               and t["name"] == root)
    off = 0
    for name in path.split("."):
        found = find(tid, name)
        assert found is not None, f"{root}.{path}: no member {name}"
        off += found[0]
        tid = found[1]
    return off, size_of(tid)


@pytest.mark.parametrize("struct,root,fields", LAYOUTS, ids=[s.__name__ for s, *_ in LAYOUTS])
def test_attr_layouts_match_the_kernel(struct, root, fields):
    ours = {f: (getattr(struct, f).offset, getattr(struct, f).size)
            for f, _ in struct._fields_ if not f.startswith("_")}
    assert set(ours) == set(fields)
    assert ours == {f: offset(root, path) for f, path in fields.items()}
    assert ctypes.sizeof(struct) <= named("UNION" if root == "bpf_attr" else "STRUCT",
                                          root)["size"]


@pytest.mark.parametrize("enum,name,value", CONSTANTS, ids=[c[1] for c in CONSTANTS])
def test_numbers_match_the_kernel(enum, name, value):
    assert named("ENUM", enum)["values"][name] == value


def test_this_kernel_has_tcx():
    """6.18 has tcx (>= 6.6): the probe must say so, or natgw silently uses the filters."""
    assert "BPF_TCX_INGRESS" in named("ENUM", "bpf_attach_type")["values"]
    assert tcx_available()
