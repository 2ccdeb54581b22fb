"""Guest MIPS of the functional path, measured side by side in one run.

(a) patched QEMU alone (same quantum and icount recipe, no plugin),
(b) cosim fast mode (counts only, batched round trips),
(c) cosim trace mode, the bridge receiving and discarding every turn's
    memory and instruction-fetch trace (it only feeds the run digest),
on STREAM and GUPS with 1 and 4 harts. Ratios are to (a) of the same row.
Each configuration runs ``--repeat`` times and keeps the fastest (the
machine is shared and noisy). Wall time includes QEMU start-up in every
column alike.

    .venv/bin/python bench/bench_quantum.py [--repeat 2] [--quantum 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cosim import build  # noqa: E402
from cosim.libqflex_bridge import Bridge, QemuConfig  # noqa: E402
from cosim.quantum import Schedule, run_round_robin  # noqa: E402

# about 100-150 M instructions each, so start-up is a few percent
WORKLOADS = {"stream": "stream-n1m-r8", "gups": "gups-ws16m-n8m"}


def run_cosim(kernel: Path, smp: int, quantum: int, mode: str) -> tuple[float, int]:
    started = time.perf_counter()
    with Bridge(QemuConfig(kernel=kernel, smp=smp, quantum=quantum, mode=mode)) as bridge:
        schedule = Schedule(smp)
        run_round_robin(bridge, schedule)
        assert bridge.exit_code == 0, f"guest exit code {bridge.exit_code}"
    return time.perf_counter() - started, schedule.total


def run_qemu_alone(kernel: Path, smp: int, quantum: int) -> float:
    """The bridge's command line minus the plugin (and the QMP socket)."""
    cmd = Bridge(QemuConfig(kernel=kernel, smp=smp, quantum=quantum)).command_line()
    i = cmd.index("-plugin")
    del cmd[i:i + 2]
    i = cmd.index("-qmp")
    del cmd[i:i + 2]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def best(fn, repeat: int):
    return min((fn() for _ in range(repeat)), key=lambda r: r if isinstance(r, float) else r[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quantum", type=int, default=1000)
    args = parser.parse_args()
    q = args.quantum
    print(f"quantum {q}, best of {args.repeat}; MIPS = guest instructions / wall second")
    print(f"{'workload':<8} {'harts':>5} {'Minsns':>8} | {'(a) qemu':>9} | {'(b) fast':>9} {'ratio':>6} | "
          f"{'(c) trace':>9} {'ratio':>6}")
    for name, variant in WORKLOADS.items():
        kernel = build.guest_elf(variant)
        for smp in (1, 4):
            wall_b, insns = best(lambda: run_cosim(kernel, smp, q, "fast"), args.repeat)
            wall_a = best(lambda: run_qemu_alone(kernel, smp, q), args.repeat)
            wall_c, insns_c = best(lambda: run_cosim(kernel, smp, q, "trace"), args.repeat)
            assert insns_c == insns, "trace and fast mode executed different instruction counts"
            mips = [insns / w / 1e6 for w in (wall_a, wall_b, wall_c)]
            print(f"{name:<8} {smp:>5} {insns / 1e6:>8.1f} | {mips[0]:>9.1f} | {mips[1]:>9.1f} "
                  f"{mips[1] / mips[0]:>6.2f} | {mips[2]:>9.1f} {mips[2] / mips[0]:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
