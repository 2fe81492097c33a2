#!/usr/bin/env python3
"""Where the guest instructions of an aarch64 run go, by function.

    qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu \\
        -plugin libinsn.so,out=blocks.tsv -d plugin BINARY ARGS...
    tools/bench/arm_profile.py BINARY blocks.tsv [TOP]

libinsn.so is tools/bench/qemu/insn.c built with
`gcc -shared -fPIC -O2 -o libinsn.so tools/bench/qemu/insn.c -Wl,--unresolved-symbols=ignore-all`.
BINARY must keep its symbols (the release profile does; CI's `ci` profile
strips them). Blocks outside BINARY (the C library, the dynamic loader)
are summed as one line.
"""

import bisect
import collections
import subprocess
import sys


def symbols(binary):
    out = subprocess.run(
        ["aarch64-linux-gnu-nm", "-C", "-n", "--defined-only", "-S", binary], capture_output=True, text=True, check=True
    ).stdout
    syms = []
    for line in out.splitlines():
        # "ADDR SIZE TYPE NAME", or "ADDR TYPE NAME" for assembly symbols
        # without a size; demangled names contain spaces.
        f = line.split(None, 2)
        if len(f) == 3 and len(f[1]) == 1:
            addr, size, (kind, _, name) = f[0], "0", f[1:2] + [" "] + f[2:]
        else:
            f = line.split(None, 3)
            if len(f) < 4:
                continue
            addr, size, kind, name = f
        if kind in ("t", "T", "w", "W"):
            syms.append((int(addr, 16), int(size, 16), name))
    return syms


def short(name):
    # Drop generic arguments and the hash: enough to tell the kernels apart.
    depth, out = 0, []
    for ch in name:
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">" and depth > 0
    return "".join(out).split("::h")[0][:110]


def main():
    binary, tsv = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    syms = symbols(binary)
    starts = [s[0] for s in syms]
    blocks = [(int(f[0], 16), int(f[1])) for f in (line.split() for line in open(tsv))]
    total = sum(n for _, n in blocks)

    def place(addr):
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0:
            return None
        # Assembly kernels (tract's) have no size: they reach the next symbol.
        end = syms[i][0] + syms[i][1] if syms[i][1] else (starts[i + 1] if i + 1 < len(starts) else 0)
        return syms[i][2] if addr < end else None

    # qemu-user 7.2 loads a position-independent aarch64 binary at
    # 0x5500000000 (its ELF_ET_DYN_BASE), a fixed one at 0.
    sample = blocks[:: max(1, len(blocks) // 5000)]
    best = max((0, 0x5500000000), key=lambda base: sum(n for a, n in sample if place(a - base)))
    per = collections.Counter()
    for a, n in blocks:
        per[short(place(a - best) or "(outside the binary: libc, loader)")] += n
    print(f"{total:,} guest instructions; base {best:#x}")
    for name, n in per.most_common(top):
        print(f"{100 * n / total:6.2f} %  {n:>16,}  {name}")


if __name__ == "__main__":
    main()
