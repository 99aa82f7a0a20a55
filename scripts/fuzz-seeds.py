#!/usr/bin/env python3
"""Writes the seed corpus kept in the repository, fuzz/seeds/<target>/.

    scripts/fuzz-seeds.py            (re)write every target's seeds

Each seed is a small, well-formed input in its target's own input format
(see the doc comment at the top of fuzz/fuzz_targets/<target>.rs): a
valid raw sample stream, a device set-up followed by samples, a page
table with a frame chain, ... so fuzzing starts deep instead of having to
find magic numbers and command sequences first. scripts/fuzz.sh passes
fuzz/seeds/<target> to libFuzzer as a second corpus directory (read only:
new inputs go to fuzz/corpus/<target>, which git ignores).

The encoders here follow the targets' parsers by hand: when a target's
input format changes, change its seeds here and rerun this script.
"""

import os
import shutil
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds")


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def s32(v):
    return struct.pack("<i", v)


KERNEL_TEXT = 0xFFFFFFFF81000000
CONTEXT_USER = (1 << 64) - 512


# --- guest_symbols ----------------------------------------------------------

def tiny_elf(base):
    """A static x86-64 ET_EXEC with one R+X PT_LOAD at `base`, a .text and
    one function symbol (the same layout as perf_data_roundtrip's)."""
    text_off, text_len, symtab_off = 0x100, 0x100, 0x200
    strtab = b"\0fuzz_main\0"
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    strtab_off = symtab_off + 48
    shstrtab_off = strtab_off + len(strtab)
    sh_off = (shstrtab_off + len(shstrtab) + 7) // 8 * 8
    b = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 9)
    b += u16(2) + u16(62) + u32(1) + u64(base + text_off) + u64(64) + u64(sh_off) + u32(0)
    for v in (64, 56, 1, 64, 5, 4):
        b += u16(v)
    b += u32(1) + u32(5)
    for v in (0, base, base, text_off + text_len, text_off + text_len, 0x1000):
        b += u64(v)
    b += b"\0" * (text_off - len(b))
    b += b"\xcc" * text_len
    b += b"\0" * 24
    b += u32(1) + bytes([0x12, 0]) + u16(1) + u64(base + text_off) + u64(0x40)
    b += strtab + shstrtab
    b += b"\0" * (sh_off - len(b))

    def sh(name, ty, flags, addr, off, size, link, info, align, entsize):
        return (u32(name) + u32(ty) + u64(flags) + u64(addr) + u64(off) + u64(size)
                + u32(link) + u32(info) + u64(align) + u64(entsize))

    b += sh(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    b += sh(1, 1, 6, base + text_off, text_off, text_len, 0, 0, 16, 0)
    b += sh(7, 2, 0, 0, symtab_off, 48, 3, 1, 8, 24)
    b += sh(15, 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0)
    b += sh(23, 3, 0, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0)
    return bytes(b)


def guest_symbols():
    system_map = (
        "ffffffff81000000 T _text\n"
        "ffffffff81000100 T start_kernel\n"
        "ffffffff81000200 t do_one_initcall\n"
        "ffffffff81000300 W weak_alias\n"
        "ffffffff81000300 T strong_alias\n"
        "ffffffff81200000 D _edata\n"
    )
    proc_kallsyms = (
        "ffffffffc0000000 t pvpmu_probe\t[pvpmu]\n"
        "ffffffffc0000100 t pvpmu_remove\t[pvpmu]\n"
        "ffffffff81000000 T _stext\n"
        "0000000000000000 A fixed_percpu_data\n"
    )
    return {
        "system-map": b"\0" + system_map.encode(),
        "proc-kallsyms-modules": b"\2" + proc_kallsyms.encode(),
        "malformed-lines": b"\4" + b"ffffffff81000000\nzz T bad\nffffffff81000010 T ok\n",
        "static-elf": b"\1" + tiny_elf(0x400000),
    }


# --- guest_walk, kernel_tables: page tables over guest memory ---------------

def identity_tables(mem_len):
    """Memory with 4-level tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000
    (PD): VA 0 and VA 0xffffffff80000000 both map PA 0 with a 2 MiB page."""
    m = bytearray(mem_len)

    def put(addr, v):
        m[addr:addr + 8] = u64(v)

    put(0x1000 + 8 * 0, 0x2000 | 3)
    put(0x1000 + 8 * 511, 0x2000 | 3)
    put(0x2000 + 8 * 0, 0x3000 | 3)
    put(0x2000 + 8 * 510, 0x3000 | 3)
    put(0x3000, 0x0 | 0x83)  # present, writable, 2 MiB page
    return m, put


def guest_walk():
    seeds = {}
    kbase = 0xFFFFFFFF80000000
    # User chain: rbp 0x800 -> 0x810 -> 0x820 -> 0 (return addresses in
    # user text).
    m, put = identity_tables(0x4000)
    for i, (nxt, ret) in enumerate([(0x810, 0x401010), (0x820, 0x401020), (0, 0x401030)]):
        put(0x800 + 0x10 * i, nxt)
        put(0x808 + 0x10 * i, ret)
    head = u64(0x1000) + u64(0x800) + u64(0x7F0) + u8(0)
    probes = u64(0x800) + u64(0x401000) + u64(kbase + 0x800) + u64(0xFFFF800000000000)
    seeds["user-chain"] = head + probes + bytes(m)
    # Kernel chain through the high mapping, ending in user space.
    m, put = identity_tables(0x4000)
    put(0x900, kbase + 0x910)
    put(0x908, KERNEL_TEXT + 0x100)
    put(0x910, 0x820)
    put(0x918, KERNEL_TEXT + 0x200)
    put(0x820, 0)
    put(0x828, 0x401030)
    head = u64(0x1000) + u64(kbase + 0x900) + u64(kbase + 0x8F0) + u8(1)
    seeds["kernel-to-user-chain"] = head + probes + bytes(m)
    # A frame that points at itself, and a non-canonical rbp.
    m, put = identity_tables(0x4000)
    put(0xA00, 0xA00)
    put(0xA08, 0x401000)
    seeds["self-loop"] = u64(0x1000) + u64(0xA00) + u64(0x9F0) + u8(0) + probes + bytes(m)
    seeds["no-tables"] = u64(0x1000) + u64(0x8000_0000_0000_0000) + u64(0) + u8(1) + probes
    return seeds


def btf(hot):
    """task_struct { int pid; int tgid; char comm[16]; } and a per-CPU
    current_task (or pcpu_hot.current_task), as vmm/src/btf_layout.rs's
    tests build it."""
    types, strings, ids = bytearray(), bytearray(b"\0"), [1]

    def s(name):
        if not name:
            return 0
        off = len(strings)
        strings.extend(name.encode() + b"\0")
        return off

    def head(name, kind, vlen, size_or_type):
        types.extend(u32(s(name)) + u32((kind << 24) | vlen) + u32(size_or_type))
        ids[0] += 1
        return ids[0] - 1

    def record(kind, name, size, members):
        t = head(name, kind, len(members), size)
        for m, ty, off in members:
            types.extend(u32(s(m)) + u32(ty) + u32(off * 8))
        return t

    int_ = head("int", 1, 0, 4)
    types.extend(u32(32))
    ch = head("char", 1, 0, 1)
    types.extend(u32(8))
    comm = head("", 3, 0, 0)
    types.extend(u32(ch) + u32(int_) + u32(16))
    task = record(4, "task_struct", 64, [("pid", int_, 0x10), ("tgid", int_, 0x14), ("comm", comm, 0x20)])
    ptr = head("", 2, 0, task)
    if hot:
        hot_t = record(4, "pcpu_hot", 16, [("preempt_count", int_, 0), ("current_task", ptr, 8)])
        var = head("pcpu_hot", 14, 0, hot_t)
    else:
        var = head("current_task", 14, 0, ptr)
    types.extend(u32(1))
    head(".data..percpu", 15, 1, 0x1000)
    types.extend(u32(var) + u32(0x2C0) + u32(8))
    hdr = u16(0xEB9F) + bytes([1, 0]) + u32(24) + u32(0) + u32(len(types)) + u32(len(types)) + u32(len(strings))
    return hdr + bytes(types) + bytes(strings)


def kernel_tables():
    seeds = {}
    seeds["btf-current-task"] = b"\1" + btf(False)
    seeds["btf-pcpu-hot"] = b"\5" + btf(True)
    # ORC file: two entries (ips relative to _text), undefined unwind data.
    n = 2
    orc = b"PVORC001" + u8(2) + b"\0" * 7 + u64(n) + u64(KERNEL_TEXT) + u64(KERNEL_TEXT + 0x100) + b"\0" * (6 * n)
    seeds["orc-file"] = b"\2" + orc
    # ORC walk: 2 entries (sp-based, type call), registers, identity tables.
    ips = s32(0) + s32(0x100)
    # sp_offset 16, bp_offset 0, bits: sp_reg SP (2), type CALL (1 << 4 for v1/v2).
    ent = struct.pack("<hhH", 16, 0, 2 | (1 << 4))
    m, put = identity_tables(0x4000)
    put(0x800, 0)
    put(0x808, KERNEL_TEXT + 0x180)
    regs = b"".join(u64(v) for v in (KERNEL_TEXT + 0x10, 0xFFFFFFFF80000800, 0, 0, 0, 0, 0))
    seeds["orc-walk"] = b"\3" + u8(n - 1) + ips + ent * n + regs + bytes(m)
    seeds["kallsyms-tables-garbage"] = b"\0" + u64(0xFFFFFFFF82000000) + bytes(range(256)) * 2
    return seeds


# --- legacy_bus, sandbox_console --------------------------------------------

def legacy_bus():
    def op(kind, port, width, value):
        return u8(kind) + u16(port) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width]) + u64(value)

    hello = b"".join(op(1, 0x3F8, 1, c) for c in b"hello, guest\n")
    cmos = op(1, 0x70, 1, 0x0A) + op(0, 0x71, 1, 0) + op(1, 0x70, 1, 0x00) + op(0, 0x71, 1, 0)
    i8042 = op(0, 0x64, 1, 0) + op(1, 0x64, 1, 0xFE) + op(0, 0x60, 1, 0)
    escapes = b"".join(op(1, 0x3F8, 1, c) for c in b"\x1b[31mred\x1b[0m \xc2\x9b bad\r\n")
    serial_regs = op(1, 0x3FB, 1, 0x80) + op(1, 0x3F8, 1, 1) + op(1, 0x3FB, 1, 3) + op(1, 0x3F9, 1, 1) + op(2, 0, 4, 0x0A6B6F) + op(0, 0x3F8, 1, 0) + op(0, 0x3FD, 1, 0)
    return {
        "serial-line-plain": b"\0" + hello,
        "serial-escapes-terminal": b"\1" + escapes,
        "cmos-i8042": b"\0" + cmos + i8042 + op(1, 0xF4, 1, 0),
        "serial-registers-input": b"\3" + serial_regs,
    }


def sandbox_console():
    boot = b"[    0.000000] Linux version 6.1.0\n[    0.1] console [ttyS0] enabled\n@@sandbox-f-start@@\njob output\n"
    return {
        "boot-log": u16(4096) + boot,
        "escapes-and-cr": u16(255) + b"\x1b[2J\x1b[Hprogress 10%\rprogress 100%\n\x1b]0;title\x07done\n",
        "long-line-small-cap": u16(63) + b"x" * 300 + b"\n" + "\u00e9".encode() * 80 + b"\n",
        "markers-mixed": u16(1024) + b"a@@sandbox-f-no-kvm@@\n@@sandbox-g-exit=1@@\n@@sandbox-f-stop@@\npartial@@sandbox-f-exit=",
    }


# --- perf_ring, pvpmu_trace -------------------------------------------------

ST_IP, ST_TID, ST_TIME, ST_CALLCHAIN, ST_ID, ST_CPU, ST_PERIOD, ST_STREAM_ID, ST_RAW, ST_IDENTIFIER = (
    1, 2, 4, 32, 64, 128, 256, 512, 1024, 1 << 16)


def perf_ring():
    def head(fmt, read_format, sid, control, data, aux, flags, wakeup, aux_wm):
        b = u64(fmt) + u64(read_format) + u8(sid)
        b += u8(control) + u8(len(data) - 1) + u8(len(aux))
        b += bytes(data) + bytes(aux) + u8(flags)
        b += u16(wakeup) if flags & 4 else u8(wakeup)
        return b + u16(aux_wm)

    def sample(ip, raw=0, chain=0, nvals=0, aux=0):
        return u8(0) + u8(raw) + u64(ip) + u8(chain) + u8(nvals) + u8(aux)

    fmt = ST_IDENTIFIER | ST_IP | ST_TID | ST_TIME | ST_CPU | ST_PERIOD | ST_CALLCHAIN
    samples = b"".join(sample(i, chain=i % 5) for i in range(1, 30))
    seeds = {}
    seeds["forward-samples-read"] = head(fmt, 0, 1, 0, [1, 2, 3, 4], [], 0, 1, 0) + samples + u8(7) + samples + u8(7)
    seeds["overwrite-backward"] = head(fmt | ST_RAW, 0, 1, 0, [1, 2], [], 3, 0, 0) + b"".join(sample(i, raw=8, chain=3) for i in range(40))
    seeds["hostile-tail-then-sane"] = (head(fmt, 0, 1, 0, [1, 2], [], 0, 1, 0) + samples[:60] + u8(5) + u64(0xFFFF_FFFF_0000) + u64(0)
                                       + samples + u8(6) + u8(7) + u8(4))
    seeds["aux-session"] = (head(ST_IP | ST_TID, 0, 0, 0, [1], [5, 6], 8 | 4, 64, 4096)
                            + u8(9) + u8(9) + u16(300) + u8(1) + u8(9) + u16(5000) + u8(0) + u8(8) + u8(1) + sample(7))
    seeds["misaligned-pages"] = head(ST_IP, 0, 0, 0x80, [1, 30], [], 0, 1, 0) + sample(1)
    return seeds


def pvpmu_trace():
    def rec(ty, vcpu, body):
        size = 8 + len(body)
        return u16(ty) + u16(size) + u32(vcpu) + body

    header = rec(1, 0, u32(1) + u32(0) + u64(1_000_000))
    exits = b"".join(rec(2, 0, u64(1000 * i) + u64(0xFFFFFFFF81000000 + i) + u64(0x3F8) + u32(1 + i % 6) + u32(1) + u64(700)) for i in range(6))
    names = [b"exits", b"halt_exits", b"io_exits"]
    blob = b"".join(n + b"\0" for n in names)
    blob += b"\0" * (-len(blob) % 8)
    stats_names = rec(4, 0, u32(len(names)) + u32(0) + blob)
    stats = rec(3, 0, u64(5000) + u32(3) + u32(0) + b"".join(u64(i) + u64(10 * i) for i in range(3)))
    return {
        "header-exits": b"\x07" + header + exits,
        "stats": b"\x03" + header + stats_names + stats,
        "bad-record-then-good": b"\x10" + header + rec(2, 0, u64(1)) + exits[:48] + rec(9, 1, u64(0)),
        "two-vcpus-chunked": b"\x01" + header + rec(1, 1, u32(1) + u32(0) + u64(5)) + exits,
    }


# --- raw_stream --------------------------------------------------------------

def raw_header():
    return b"PVRAWSMP" + u32(4) + u32(16)


def raw_sample(vcpu, user, task, frames, vcpu_tid=4242, time=1000, ip=KERNEL_TEXT + 0x100, period=1_000_000, start_code=None):
    pid, tid, comm = task if task else (0, 0, b"")
    b = u8(1) + u8(vcpu) + u8(user) + u8(len(comm)) + u8(1 if task else 0)
    b += u16(len(frames)) + u16(0 if start_code is None else 1) + u32(vcpu_tid) + u32(pid) + u32(tid)
    b += u64(time) + u64(ip) + u64(period)
    if start_code is not None:
        b += u64(start_code)
    b += comm
    return b + b"".join(u64(f) for f in frames)


def raw_stats(lost, walks, walk_ns):
    return u8(2) + u64(lost) + u64(walks) + u64(walk_ns)


def raw_stream():
    two = (raw_sample(1, 0, (7, 8, b"pv-workload"), [KERNEL_TEXT + 0x200, 0x401000])
           + raw_sample(0, 1, None, [], vcpu_tid=4243, ip=0x401010))
    return {
        "two-samples-stats": raw_header() + two + raw_stats(1, 2, 3),
        "items-without-header": two + raw_stats(0, 0, 0),
        "long-comm-utf8-many-frames": raw_header() + raw_sample(2, 0, (1, 1, "\u00e9".encode() * 127), list(range(1, 300))) + raw_stats(0, 1, 99),
        "pie-start-code": raw_header() + raw_sample(0, 1, (9, 9, b"incpie"), [0x555555555200], ip=0x555555555190, start_code=0x555555555000) + raw_stats(0, 0, 0),
        "stats-only": raw_header() + raw_stats(5, 6, 7),
        "truncated-sample": raw_header() + two[:30],
        "bad-version": b"PVRAWSMP" + u32(2) + u32(16) + two,
    }


# --- perf_data_roundtrip -----------------------------------------------------

def pd_cfg(nr, callchain=False, symbols=False, binaries=False, tids=False, period=False):
    return u8((nr - 1) | (4 if callchain else 0) | (8 if symbols else 0) | (16 if binaries else 0)
              | (32 if tids else 0) | (64 if period else 0))


def pd_addr(kind, v=0):
    """kind: 'any' (u64 v), 'kernel'/'bin'/'other' (+8*v), 'zero', 'marker' (+v)."""
    sel = {"any": 0, "kernel": 1, "bin": 2, "other": 3, "zero": 4, "marker": 5}[kind]
    if kind == "any":
        return u8(sel) + u64(v)
    if kind == "zero":
        return u8(sel)
    return u8(sel) + u8(v)


def pd_sample(cpu, user=False, bad_cpu=False, vcpu_tid=0, pid=None, tid=None, comm=None,
              time=1000, ip=("kernel", 1), period=1_000_000, chain=(), long_chain_seed=None):
    f = (cpu & 0x3F) | (0x40 if user else 0) | (0x80 if bad_cpu else 0)
    b = u8(f)
    b += u8(vcpu_tid) if vcpu_tid < 6 else u8(7) + u32(vcpu_tid)
    sel = {None: 0, 1: 1, 2: 2, 4242: 3, 100: 4}
    ps = sel.get(pid, 5)
    ts = sel.get(tid, 5)
    b += u8(ps | (ts << 3))
    if ps == 5:
        b += u32(pid)
    if ts == 5:
        b += u32(tid)
    named = {None: 0, "fuzzbin": 1, "other": 2, "init": 3, "a-comm-longer-than-fifteen": 4}
    if comm in named:
        b += u8(named[comm])
    else:
        raw = comm if isinstance(comm, bytes) else comm.encode()
        b += u8(5) + u8(len(raw)) + raw
    b += u64(time) + pd_addr(*ip) + u32(period)
    if long_chain_seed is not None:
        b += u8(255) + u64(long_chain_seed)
    else:
        b += u8(len(chain)) + b"".join(pd_addr(*a) for a in chain)
    return b


def perf_data_roundtrip():
    kchain = [("kernel", 2), ("kernel", 3), ("bin", 1)]
    full = pd_cfg(2, callchain=True, symbols=True, binaries=True, tids=True)
    exec_change = (pd_sample(0, pid=2, tid=2, comm="init", time=10, chain=kchain)
                   + pd_sample(1, user=True, vcpu_tid=1, pid=2, comm="fuzzbin", time=20, ip=("bin", 4), chain=[("bin", 5), ("bin", 6)])
                   + pd_sample(1, user=True, vcpu_tid=1, pid=2, comm="other", time=30, ip=("other", 1))
                   + pd_sample(0, user=True, pid=2, comm="init", time=40, ip=("bin", 1))
                   + pd_sample(0, pid=None, time=50, chain=[("kernel", 9)])
                   + pd_sample(1, bad_cpu=True, pid=1, comm="init", time=60))
    return {
        "directory-binaries-exec": full + exec_change,
        "file-no-callchain": pd_cfg(1) + pd_sample(0, pid=1, comm="init", time=5) + pd_sample(0, user=True, pid=None, time=6, ip=("bin", 2)),
        "long-callchain": pd_cfg(4, callchain=True) + pd_sample(3, pid=100, tid=101, comm="worker", time=7, long_chain_seed=3),
        "odd-comms-and-ids": (pd_cfg(3, callchain=True, binaries=True, period=True)
                              + pd_sample(2, vcpu_tid=0xDEAD, pid=0xFFFFFFFF, tid=0, comm=b"nul\0in\0comm", time=0, ip=("zero",), period=0)
                              + pd_sample(1, pid=4242, tid=5, comm="\u00e9t\u00e9-\u00e0-la-plage!!", time=2 ** 63, ip=("marker", 3),
                                          chain=[("marker", 1), ("zero",), ("kernel", 1), ("bin", 1), ("kernel", 2), ("any", CONTEXT_USER)])
                              + pd_sample(0, user=True, pid=4242, comm="a-comm-longer-than-fifteen", time=1, ip=("bin", 3))),
        "many-threads": pd_cfg(2, callchain=True) + b"".join(
            pd_sample(i % 2, vcpu_tid=i % 6, pid=1000 + i, tid=2000 + i, comm=f"t{i}", time=100 + i, chain=[("kernel", i)]) for i in range(40)),
    }


# --- pvpmu_device, pvpmu_device_threads ---------------------------------------

# common/pvpmu.rs STATE_FIELDS indices.
F_VERSION, F_ACTIVE, F_GEN, F_FLAGS, F_SAMPLE_TYPE = 0, 1, 2, 3, 4
F_PERIOD, F_ID, F_CPU, F_CURRENT_TASK_GPA, F_TASK_PID_OFF = 7, 8, 10, 13, 15
F_THROTTLED, F_AUX_SEQ, F_AUX_BUF, F_AUX_HEAD, F_AUX_ROOM, F_AUX_WAKEUP, F_SWITCH_SEQ = 17, 21, 22, 23, 24, 25, 26


class Dev:
    """Encoders of common/pvpmu.rs's Guest ops (without the step byte)."""

    @staticmethod
    def set_state(n, page):
        return u8(n) + u8(2) + u8(page)

    @staticmethod
    def set_ring(n, ctrl, data):
        return u8(n) + u8(0 | ({1: 0, 2: 1, 4: 2}[len(data)] << 4)) + bytes([ctrl] + data)

    @staticmethod
    def aux_set(n, pages):
        return u8(n) + u8(1 | ({1: 0, 2: 1, 4: 2}[len(pages)] << 4)) + bytes(pages)

    @staticmethod
    def aux_clear(n, i=0):
        return u8(n) + u8(3) + u8(i)

    @staticmethod
    def reset(n):
        return u8(n) + u8(4)

    @staticmethod
    def start(n):
        return u8(n) + u8(5)

    @staticmethod
    def stop(n):
        return u8(n) + u8(7 | 0x80)

    @staticmethod
    def flush_cmd(n):
        return u8(n) + u8(7)

    @staticmethod
    def field(n, f, value=None, kind="one"):
        """kind: 'u64' (value), 'small' (value), 'aux' (value = nth id),
        'types' (SAMPLE_TYPES & value), 'ram' (page value), 'one'."""
        b = u8(n) + u8(f)
        sel = {"u64": 0, "small": 1, "aux": 2, "types": 3, "ram": 4, "one": 5}[kind]
        b += u8(sel)
        if kind in ("u64", "types"):
            b += u64(value)
        elif kind in ("small", "aux"):
            b += u8(value)
        elif kind == "ram":
            b += u8(value) + u8(0)
        return b

    @staticmethod
    def tail(n, v):
        return u8(n) + u64(v)

    @staticmethod
    def host_sample(ip, flags=0, callers=3):
        return u8(0) + u64(ip) + u8(flags) + u8(callers)

    @staticmethod
    def host_aux(len8):
        return u8(2) + u8(len8)

    @staticmethod
    def host_exit(r, rip, clock):
        return u8(3) + u8(r) + u64(rip) + u64(clock)

    @staticmethod
    def host_stats(k, clock):
        return u8(4) + u8(k) + u64(clock)

    @staticmethod
    def host_flush():
        return u8(7)


def activate(n):
    D = Dev
    return [D.field(n, F_VERSION), D.field(n, F_GEN), D.field(n, F_SAMPLE_TYPE, 0xFFFFFFFFFFFFFFFF, "types"),
            D.field(n, F_PERIOD, 1_000_000, "u64"), D.field(n, F_ID, 42, "small"),
            D.field(n, F_CURRENT_TASK_GPA, 16, "ram"), D.field(n, F_TASK_PID_OFF, 16, "small"), D.field(n, F_ACTIVE)]


def pvpmu_device():
    D = Dev

    def prog(steps):
        # step: (op, bytes); ops 7 field, 8 list/cmd, 9 tail, 4 host op on vCPU n.
        return b"".join(u8(op) + b for op, b in steps)

    def host(n, b):
        return (4, u8(n) + b)

    setup0 = [(8, D.set_state(0, 16)), (8, D.set_ring(0, 17, [18, 19]))] + [(7, f) for f in activate(0)] + [(8, D.start(0))]
    samples0 = [host(0, D.host_sample(KERNEL_TEXT + i, flags=i % 16, callers=i)) for i in range(8)]
    aux0 = [(8, D.aux_set(0, [30, 31])), (7, D.field(0, F_AUX_BUF, 0, "aux")), (7, D.field(0, F_AUX_ROOM, 8192, "u64")),
            (7, D.field(0, F_AUX_WAKEUP, 4096, "u64")), (7, D.field(0, F_AUX_SEQ)),
            host(0, D.host_exit(2, KERNEL_TEXT, 5000)), host(0, D.host_stats(3, 6000)), host(0, D.host_aux(8))]
    release = [(8, D.stop(0)), (8, D.reset(0)), (8, D.aux_clear(0))] + samples0[:3] + [host(0, D.host_aux(4)), host(0, D.host_flush())]
    raw_mmio = b"".join(u8(0) + u64(off) + u8(w) + u64(v) for off, w, v in [
        (0x108, 3, 16 * 4096), (0x100, 2, 1), (0x104, 2, 0), (0x100, 0, 5), (0x140, 2, 3), (0xFFF, 1, 7), (0x100, 3, 2)])
    replace = setup0 + [(8, D.stop(0)), (8, D.set_state(0, 20)), (8, D.set_ring(0, 21, [22])), (8, D.set_ring(1, 17, [18]))] + [(7, f) for f in activate(0)] + [(8, D.start(0))] + samples0[:4]
    return {
        "setup-and-samples": prog(setup0 + samples0 + [(9, D.tail(0, 4096))] + samples0),
        "aux-session": prog(setup0 + aux0 + samples0[:2]),
        "release-then-host-writes": prog(setup0 + aux0 + release),
        "replace-pages-and-steal": prog(replace),
        "raw-mmio": raw_mmio + prog(setup0[:2]),
        "bank1-hostile-tail": prog([(8, D.set_state(1, 40)), (8, D.set_ring(1, 41, [42, 43, 44, 45]))] + [(7, f) for f in activate(1)]
                                   + [(8, D.start(1)), (9, D.tail(1, 0xFFFFFFFFFFFFFFF0))] + [host(1, D.host_sample(i, callers=200)) for i in range(6)]),
    }


def pvpmu_device_threads():
    D = Dev

    def ops(items):
        b = u8(len(items))
        for it in items:
            b += u8(len(it)) + it
        return b

    def guest(op, b):
        return u8(op) + b

    def sampler(n, b):
        return u8(n - 1) + b

    samp = [sampler(1 + i % 3, D.host_sample(KERNEL_TEXT + i, flags=i % 16, callers=i % 9)) for i in range(24)]
    aux = [sampler(1, D.host_aux(4)) for _ in range(6)] + [sampler(1, D.host_exit(3, 1, 2)), sampler(2, D.host_flush())]
    releases = [guest(2, D.reset(2)), guest(2, D.stop(1)), guest(2, D.aux_clear(1)), guest(2, D.reset(1)),
                guest(5, D.tail(3, 1 << 40)), guest(4, D.field(3, F_THROTTLED))]
    reclaim = [guest(2, D.set_state(2, 16 + 8)), guest(2, D.set_ring(2, 25, [26])), guest(4, D.field(2, F_ACTIVE)),
               guest(2, D.start(2)), guest(2, D.aux_set(0, [70, 71])), guest(4, D.field(0, F_AUX_BUF, 0, "aux"))]
    cfg_full = u8(2 | 8 | 16)   # 4 vCPUs, callchains, set-up
    return {
        "setup-race-release": cfg_full + ops(releases) + ops(samp) + ops(reclaim) + ops(samp + aux),
        "setup-aux-race": cfg_full + ops([guest(4, D.field(1, F_AUX_ROOM, 4096, "u64")), guest(4, D.field(1, F_AUX_SEQ))]) + ops(aux * 3) + ops([guest(2, D.aux_clear(1))]) + ops(aux),
        "two-vcpus-host-timer": u8(1 | 4 | 16) + ops([guest(7, D.host_sample(5)), guest(2, D.reset(1))]) + ops(samp[:8]) + ops([guest(2, D.set_state(1, 30))]) + ops(samp[:8]),
        "no-setup-commands": u8(1) + ops([guest(2, D.set_state(0, 16)), guest(2, D.set_ring(1, 17, [18])), guest(6, u8(1)), guest(0, u64(0x140) + u8(2) + u64(4))]) + ops(samp[:4]),
    }


TARGETS = {
    "guest_symbols": guest_symbols,
    "guest_walk": guest_walk,
    "kernel_tables": kernel_tables,
    "legacy_bus": legacy_bus,
    "sandbox_console": sandbox_console,
    "perf_ring": perf_ring,
    "pvpmu_trace": pvpmu_trace,
    "raw_stream": raw_stream,
    "perf_data_roundtrip": perf_data_roundtrip,
    "pvpmu_device": pvpmu_device,
    "pvpmu_device_threads": pvpmu_device_threads,
}


def main():
    if len(sys.argv) > 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    total = 0
    for target, make in TARGETS.items():
        d = os.path.join(ROOT, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        seeds = make()
        assert 3 <= len(seeds) <= 10, target
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"fuzz-seeds: {target}: {len(seeds)} seeds", file=sys.stderr)
    assert total < 1 << 20, total
    print(f"fuzz-seeds: {total} bytes in all, in {os.path.normpath(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
