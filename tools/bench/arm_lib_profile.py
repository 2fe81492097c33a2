#!/usr/bin/env python3
"""Guest instructions per inference by function and by instruction, for
any aarch64 process under qemu-user, shared libraries included.

    arm_lib_profile.py [--top N] A.tsv A.MAPS B.tsv B.MAPS RUNS

A and B are two runs of the same program, with 1 and 1+RUNS inferences,
each recorded with `-plugin libinsn.so,out=X.tsv` (tools/bench/qemu/insn.c,
three columns: block address, instructions executed there, block length).
MAPS is the guest's /proc/self/maps at the end of that run (qemu-user
shows the guest's mappings; tools/bench/ort_runs.py writes it), or
`@BINARY` for a lone executable (lookout; loaded at 0 or 0x5500000000).
Each function's count is (B - A) / RUNS: load and start-up cancel out.

Functions come from the file's symbol table; in a stripped file (the
onnxruntime wheel's) from its .eh_frame, named `fde@ADDR` (an assembly
kernel without unwind information shows as `asm@ADDR`: the stretches
between unwind ranges, cut after each `ret`). For the top functions the most
executed instructions are listed (objdump), which tells an `sdot`/`udot`
kernel from a `smull`/`sadalp` one when there are no names. The last
lines sum the integer-multiply instructions over the whole run.
"""

import bisect
import collections
import os
import re
import subprocess
import sys

from arm_profile import short  # same folder: the script's own directory is on sys.path

MUL = re.compile(r"^(s|u|us|su)(dot|mmla)$|^(s|u)(mull2?|mlal2?|adalp)$|^mul$|^mla$")


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


class Elf:
    def __init__(self, path):
        self.path = path
        self.loads = []  # (p_offset, p_vaddr, p_filesz)
        for line in sh("aarch64-linux-gnu-readelf", "-lW", path).splitlines():
            f = line.split()
            if f and f[0] == "LOAD":
                self.loads.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
        syms = self.symbols(["-C", "-n", "--defined-only", "-S"])
        if len(syms) < 100:
            syms = self.fdes()
        syms.sort()
        self.starts = [s[0] for s in syms]
        self.syms = syms
        self.dis = {}
        self.cuts = {}

    def symbols(self, flags):
        try:
            out = sh("aarch64-linux-gnu-nm", *flags, self.path)
        except subprocess.CalledProcessError:
            return []
        syms = []
        for line in out.splitlines():
            f = line.split(None, 2)
            if len(f) == 3 and len(f[1]) == 1:
                addr, size, kind, name = f[0], "0", f[1], f[2]
            else:
                f = line.split(None, 3)
                if len(f) < 4:
                    continue
                addr, size, kind, name = f
            if kind in "tTwW":
                syms.append((int(addr, 16), int(size, 16), name))
        return syms

    def fdes(self):
        ranges = set()
        for m in re.finditer(r"FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", sh("aarch64-linux-gnu-readelf", "-wf", self.path)):
            a, b = int(m[1], 16), int(m[2], 16)
            if b > a:
                ranges.add((a, b - a))
        out, end = [], 0
        for a, n in sorted(ranges):
            if a > end and end:
                out.append((end, a - end, f"gap@{end:#x}"))
            out.append((a, n, f"fde@{a:#x}"))
            end = max(end, a + n)
        return out

    def split_gap(self, a, n):
        # Unwind ranges leave MLAS's assembly kernels in gaps; cut a gap
        # after each `ret`, so that every kernel gets a line of its own.
        if (a, n) not in self.cuts:
            cuts = [a]
            if n > 256:
                dis = sh("aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", f"--start-address={a:#x}", f"--stop-address={a + n:#x}", self.path)
                for line in dis.splitlines():
                    f = line.split(None, 2)
                    if len(f) >= 2 and f[1] == "ret" and re.fullmatch(r"[0-9a-f]+:", f[0]):
                        cuts.append(int(f[0][:-1], 16) + 4)
            self.cuts[(a, n)] = sorted(set(c for c in cuts if c < a + n)) + [a + n]
        return self.cuts[(a, n)]

    def vaddr(self, off):
        for p_off, p_vaddr, size in self.loads:
            if p_off <= off < p_off + size:
                return off - p_off + p_vaddr
        return off

    def place(self, va):
        i = bisect.bisect_right(self.starts, va) - 1
        if i < 0:
            return None
        a, n, name = self.syms[i]
        end = a + n if n else (self.starts[i + 1] if i + 1 < len(self.starts) else a)
        if va >= end:
            return None
        if name.startswith("gap@"):
            cuts = self.split_gap(a, n)
            k = bisect.bisect_right(cuts, va) - 1
            return (cuts[k], cuts[k + 1], f"asm@{cuts[k]:#x}")
        return (a, end, name)

    def mnemonics(self, a, end):
        if (a, end) not in self.dis:
            m = {}
            out = sh("aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", f"--start-address={a:#x}", f"--stop-address={end:#x}", self.path)
            for line in out.splitlines():
                f = line.split(None, 2)
                if len(f) >= 2 and f[0].endswith(":") and re.fullmatch(r"[0-9a-f]+:", f[0]):
                    m[int(f[0][:-1], 16)] = f[1]
            self.dis[(a, end)] = m
        return self.dis[(a, end)]


def mappings(maps):
    if maps.startswith("@"):
        return None, maps[1:]
    segs = []
    for line in open(maps):
        f = line.split(None, 5)
        if len(f) == 6 and "x" in f[1] and f[5].strip().startswith("/"):
            a, b = (int(x, 16) for x in f[0].split("-"))
            segs.append((a, b, int(f[2], 16), f[5].strip()))
    return sorted(segs), None


elves = {}


def elf(path):
    if path not in elves:
        elves[path] = Elf(path) if os.path.exists(path) else None
    return elves[path]


def attribute(tsv, maps, per, blocks_of, sign):
    segs, lone = mappings(maps)
    base = None
    rows = [line.split() for line in open(tsv)]
    if lone:
        e = elf(lone)
        sample = rows[:: max(1, len(rows) // 5000)]
        base = max((0, 0x5500000000), key=lambda b: sum(int(r[1]) for r in sample if e.place(int(r[0], 16) - b)))
    starts = [s[0] for s in segs or []]
    for r in rows:
        addr, n, length = int(r[0], 16), int(r[1]), int(r[2]) if len(r) > 2 else 0
        key = ("(other)", "(outside any mapped file)")
        if lone:
            e, va = elf(lone), addr - base
        else:
            i = bisect.bisect_right(starts, addr) - 1
            e = va = None
            if i >= 0 and addr < segs[i][1]:
                e = elf(segs[i][3])
                va = e.vaddr(addr - segs[i][0] + segs[i][2]) if e else None
                key = (os.path.basename(segs[i][3]), "(no symbol)")
        if e and va is not None:
            p = e.place(va)
            if p:
                key = (os.path.basename(e.path), p[2])
                blocks_of[(e.path, p[0], p[1], p[2])].append((va, n * sign, length))
        per[key] += n * sign


def main():
    args = sys.argv[1:]
    top = 25
    if args[:1] == ["--top"]:
        top, args = int(args[1]), args[2:]
    a_tsv, a_maps, b_tsv, b_maps, runs = args
    runs = int(runs)
    per, blocks_of = collections.Counter(), collections.defaultdict(list)
    attribute(a_tsv, a_maps, per, blocks_of, -1)
    attribute(b_tsv, b_maps, per, blocks_of, +1)
    total = sum(per.values()) / runs
    print(f"{total / 1e9:.3f} G guest instructions per inference ({runs} runs)")
    libs = collections.Counter()
    for (lib, _), n in per.items():
        libs[lib] += n / runs
    for lib, n in libs.most_common(6):
        print(f"  {100 * n / total:6.2f} %  {n / 1e9:8.3f} G  {lib}")
    print()
    fn_total = collections.Counter()
    for (path, a, end, name), bl in blocks_of.items():
        fn_total[(path, a, end, name)] = sum(n for _, n, _ in bl) / runs
    mix_all = collections.Counter()
    for (lib, name), n in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * n / runs / total:6.2f} %  {n / runs / 1e9:8.3f} G  {lib}: {short(name)}")
    print()
    print("most executed instructions of the top functions:")
    for (path, a, end, name), n in fn_total.most_common(top):
        if n <= 0.001 * total:
            continue
        e = elf(path)
        m = e.mnemonics(a, end)
        mix = collections.Counter()
        for va, cnt, length in blocks_of[(path, a, end, name)]:
            if length:
                each = cnt / length / runs
                for k in range(length):
                    mix[m.get(va + 4 * k, "?")] += each
        mix_all.update(mix)
        s = sum(mix.values()) or 1
        body = ", ".join(f"{op} {100 * c / s:.0f}%" for op, c in mix.most_common(8) if c > 0)
        print(f"  {n / 1e9:7.3f} G {os.path.basename(path)}: {short(name)}  [{end - a} bytes]: {body}")
    print()
    muls = {op: c for op, c in mix_all.items() if MUL.match(op) and c > 0}
    print("integer multiply instructions per inference in those functions: "
          + (", ".join(f"{op} {c / 1e6:.1f} M" for op, c in sorted(muls.items(), key=lambda kv: -kv[1])) or "none"))


if __name__ == "__main__":
    main()
