"""BPF syscalls through libbpf.so.1 (ctypes): pinned objects, map access, test runs,
and tcx links through bpf(2) itself (libbpf 1.1 has no API for them).

Reading and updating pinned maps needs no compiler: `natgw maps` and the
control plane use this module alone; only loading programs needs bcc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LPM_TRIE = 11


class BpfError(OSError):
    """A BPF syscall failed; str() names the operation and the object."""


class _MapInfo(ctypes.Structure):
    # Leading fields of struct bpf_map_info (uapi/linux/bpf.h); the kernel
    # fills only as much as info_len says.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class _ProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts of libbpf 1.x; sz tells libbpf which fields exist.
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@cache
def _lib() -> ctypes.CDLL:
    # The soname first: find_library runs ldconfig (and maybe a compiler) in
    # subprocesses, which costs a read-only command more than all its work.
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so", use_errno=True)
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    for fn in ("bpf_map_lookup_elem", "bpf_map_update_elem", "bpf_map_delete_elem",
               "bpf_map_get_next_key"):
        getattr(lib, fn).restype = ctypes.c_int
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_uint64]
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                           ctypes.POINTER(ctypes.c_uint32)]
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
    return lib


def _errno(ret: int) -> int:
    # libbpf returns -errno (and also sets errno; older versions return -1).
    return -ret if ret != -1 else ctypes.get_errno()


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = _errno(ret)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


@cache
def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    return _check(_lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new fd the caller closes."""
    return _check(_lib().bpf_obj_get(path.encode()), f"open pinned {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(_lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "map info")
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.name.decode())


def _prog_info(fd: int) -> _ProgInfo:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "program info")
    return info


def prog_id(fd: int) -> int:
    return _prog_info(fd).id


def prog_name(fd: int) -> str:
    """The program's name (its C function's, cut to 15 characters)."""
    return _prog_info(fd).name.decode(errors="replace")


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str  # the kernel's copy: at most 15 characters
    tag: str  # hex; the same instructions give the same tag (map fds do not count)


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "program info")
    return ProgInfo(info.id, info.name.decode(), bytes(info.tag).hex())


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for a loaded program (e.g. the one a tc filter runs)."""
    return _check(_lib().bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return _check(_lib().bpf_map_get_fd_by_id(map_id), f"map id {map_id}")


def prog_map_ids(fd: int) -> list[int]:
    """Ids of the maps a program uses."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "program info")
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    info = _ProgInfo()
    info.nr_map_ids = n
    info.map_ids = ctypes.addressof(ids)
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "program info")
    return list(ids[:min(n, info.nr_map_ids)])


class Map:
    """A BPF map opened by fd, with typed keys and values (ctypes structures)."""

    def __init__(self, fd: int, key_type: type, value_type: type, name: str = "map",
                 percpu: bool = False) -> None:
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.name = name
        self.percpu = percpu
        info = map_info(fd)
        if info.key_size != ctypes.sizeof(key_type) or info.value_size != ctypes.sizeof(
            value_type
        ):
            raise BpfError(
                errno.EINVAL,
                f"map {name}: kernel layout key {info.key_size}B value {info.value_size}B, "
                f"expected {ctypes.sizeof(key_type)}B/{ctypes.sizeof(value_type)}B "
                "(pinned by another natgw version? run `natgw down` first)",
            )
        self.max_entries = info.max_entries

    @classmethod
    def open_pinned(cls, path: str, key_type: type, value_type: type,
                    percpu: bool = False) -> Map:
        return cls(obj_get(path), key_type, value_type, os.path.basename(path), percpu)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _value_buf(self) -> ctypes.Array:
        if self.percpu:
            # Per-CPU values come as one 8-byte aligned slot per possible CPU.
            stride = (ctypes.sizeof(self.value_type) + 7) & ~7
            return ctypes.create_string_buffer(stride * possible_cpus())
        return ctypes.create_string_buffer(ctypes.sizeof(self.value_type))

    def _split(self, buf: ctypes.Array) -> list:
        if not self.percpu:
            return [self.value_type.from_buffer_copy(buf)]
        stride = (ctypes.sizeof(self.value_type) + 7) & ~7
        return [self.value_type.from_buffer_copy(buf, i * stride)
                for i in range(possible_cpus())]

    def lookup(self, key: ctypes.Structure | ctypes._SimpleCData):
        """The value (a list of per-CPU values for per-CPU maps), or None if absent."""
        buf = self._value_buf()
        ret = _lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), buf)
        if ret < 0:
            err = _errno(ret)
            if err == errno.ENOENT:
                return None
            _check(ret, f"lookup in {self.name}")
        values = self._split(buf)
        return values if self.percpu else values[0]

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        if self.percpu:
            stride = (ctypes.sizeof(self.value_type) + 7) & ~7
            buf = ctypes.create_string_buffer(stride * possible_cpus())
            values = value if isinstance(value, list) else [value] * possible_cpus()
            for i, v in enumerate(values):
                ctypes.memmove(ctypes.addressof(buf) + i * stride, ctypes.addressof(v),
                               ctypes.sizeof(v))
            ret = _lib().bpf_map_update_elem(self.fd, ctypes.byref(key), buf, flags)
        else:
            ret = _lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value),
                                             flags)
        _check(ret, f"update {self.name}")

    def delete(self, key) -> bool:
        """Delete a key; False if it was absent."""
        ret = _lib().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret < 0:
            err = _errno(ret)
            if err == errno.ENOENT:
                return False
            _check(ret, f"delete from {self.name}")
        return True

    def keys(self) -> Iterator:
        """All keys. Collected first: deleting while walking would restart the walk."""
        out = []
        prev = None
        nxt = self.key_type()
        while True:
            ret = _lib().bpf_map_get_next_key(
                self.fd, ctypes.byref(prev) if prev is not None else None, ctypes.byref(nxt)
            )
            if ret < 0:
                err = _errno(ret)
                if err == errno.ENOENT:
                    break
                _check(ret, f"walk {self.name}")
            out.append(nxt)
            prev, nxt = nxt, self.key_type()
        return iter(out)

    def items(self) -> Iterator[tuple]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes = b""  # the context after the run, when one was given


def prog_test_run(prog_fd: int, data: bytes, ctx: bytes | None = None,
                  repeat: int = 1, flags: int = 0) -> TestRunResult:
    """Run a loaded program on one packet with BPF_PROG_TEST_RUN (flags: BPF_F_TEST_*)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 512)
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(opts)
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(out, ctypes.c_void_p)
    opts.data_size_out = len(out)
    opts.repeat = repeat
    opts.flags = flags
    ctx_out = ctypes.create_string_buffer(len(ctx or b""))
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx))
        opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
        opts.ctx_out = ctypes.cast(ctx_out, ctypes.c_void_p)
        opts.ctx_size_out = len(ctx)
    _check(_lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRunResult(opts.retval, out.raw[: opts.data_size_out], opts.duration,
                         ctx_out.raw[: opts.ctx_size_out])


# -- tcx links (kernel >= 6.6) --------------------------------------------------
# Values and layouts of uapi/linux/bpf.h; tests/test_bpfsys.py checks them
# against the running kernel's BTF.

BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_LINK_TYPE_TCX = 11
BPF_F_REPLACE = 1 << 2  # link_update: only if the link still runs old_prog_fd

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "loongarch64": 280,
           "ppc64le": 361, "s390x": 351, "armv7l": 386, "i686": 357}


class _LinkCreateAttr(ctypes.Structure):
    # union bpf_attr, struct link_create, with its tcx member
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
    ]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [
        ("link_fd", ctypes.c_uint32),
        ("new_prog_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    ]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class _GetFdByIdAttr(ctypes.Structure):
    _fields_ = [
        ("link_id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _QueryAttr(ctypes.Structure):
    # union bpf_attr, struct query (the mprog fields of 6.6 included)
    _fields_ = [
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
    ]


class _LinkInfo(ctypes.Structure):
    # struct bpf_link_info: its union starts 8-aligned; tcx is {ifindex, attach_type}
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
    ]


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def sys_bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """bpf(2) with one command's attr; BpfError on failure, else the result (an fd)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(errno.ENOSYS, f"{what}: bpf(2) number unknown on {platform.machine()}")
    ret = _libc().syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                          ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def tcx_link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """Attach a program to a device's tcx hook, last; returns the link's fd."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type)
    return sys_bpf(BPF_LINK_CREATE, attr, f"tcx link on ifindex {ifindex}")


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
    """Swap the program a link runs, atomically (old_prog_fd: only if it still runs that)."""
    attr = _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd)
    if old_prog_fd is not None:
        attr.flags, attr.old_prog_fd = BPF_F_REPLACE, old_prog_fd
    sys_bpf(BPF_LINK_UPDATE, attr, "link update")


def link_detach(link_fd: int) -> None:
    """Detach a link from its hook, whoever else holds it (pins, other processes' fds)."""
    sys_bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd), "link detach")


def link_fd_by_id(link_id: int) -> int:
    return sys_bpf(BPF_LINK_GET_FD_BY_ID, _GetFdByIdAttr(link_id=link_id),
                   f"link id {link_id}")


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int  # tcx: 0 once detached (by BPF_LINK_DETACH or the device going)
    attach_type: int


def link_info(fd: int) -> LinkInfo:
    info = _LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "link info")
    return LinkInfo(info.type, info.id, info.prog_id, info.ifindex, info.attach_type)


@dataclass(frozen=True)
class TcxEntry:
    prog_id: int
    link_id: int  # 0: attached without a link (BPF_PROG_ATTACH)


def tcx_query(ifindex: int, attach_type: int) -> list[TcxEntry]:
    """The programs on a device's tcx hook, in the order they run.

    EINVAL from a kernel without tcx (< 6.6).
    """
    while True:
        attr = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type)
        sys_bpf(BPF_PROG_QUERY, attr, f"tcx query on ifindex {ifindex}")
        n = attr.count
        if n == 0:
            return []
        progs, links = (ctypes.c_uint32 * n)(), (ctypes.c_uint32 * n)()
        attr = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type, count=n,
                          prog_ids=ctypes.addressof(progs), link_ids=ctypes.addressof(links))
        try:
            sys_bpf(BPF_PROG_QUERY, attr, f"tcx query on ifindex {ifindex}")
        except BpfError as e:
            if e.errno == errno.ENOSPC:  # one was attached between the two queries
                continue
            raise
        return [TcxEntry(progs[i], links[i]) for i in range(attr.count)]
