"""Detailed mode with and without QEMU running the next command while the model works.

A vCPU that goes on alone (one vCPU, or the others parked or far ahead)
has its next command decided before the model feeds the report it
follows (``engine.TimingRun._continuation``), so QEMU can execute it on
the other host core meanwhile. The results are the same either way
(tests/test_overlap.py); this prints the speed of each, side by side in
one run, for riscv STREAM and GUPS on one hart:

    .venv/bin/python bench/bench_overlap.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim import build, quantum  # noqa: E402
from cosim.boards import VirtBoard, roi_addresses  # noqa: E402
from cosim.libqflex_bridge import Bridge, QemuConfig  # noqa: E402
from cosim.timing import config as timing_config  # noqa: E402
from cosim.timing import core, engine, state  # noqa: E402

WORKLOADS = ("stream-n1m-r8", "gups-ws16m-n8m")
RAM_BASE, RAM_SIZE = VirtBoard.RAM_BASE, 1 << 30


def run(kernel: str, overlap: bool) -> tuple[float, int, int]:
    """(MIPS from QEMU start to exit, cycles, commands started early) of one detailed run."""
    path = build.guest_elf(kernel)
    model = state.build(timing_config.load(), 1, [(RAM_BASE, RAM_SIZE)],
                        roi=roi_addresses(path))
    started = time.perf_counter()
    with Bridge(QemuConfig(kernel=path, smp=1, quantum=1000, mode="trace",
                           clock="model")) as bridge:
        schedule = quantum.Schedule(1)
        timing = engine.TimingRun(bridge, schedule, model, overlap=overlap)
        timing.run()
    wall = time.perf_counter() - started
    return schedule.total / wall / 1e6, int(model.K.scal[0, core.T_TIME]), timing.early_starts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell; the fastest counts")
    args = parser.parse_args()
    print(f"one hart, quantum 1000, best of {args.repeat}; MIPS from QEMU start to exit")
    print(f"{'workload':<16} {'serial MIPS':>11} {'overlap MIPS':>12} {'ratio':>6} "
          f"{'early starts':>12}  cycles")
    for kernel in WORKLOADS:
        best: dict[bool, tuple[float, int, int]] = {}
        for _ in range(args.repeat):
            for overlap in (False, True):
                r = run(kernel, overlap)
                if overlap not in best or r[0] > best[overlap][0]:
                    best[overlap] = r
        serial, over = best[False], best[True]
        same = "identical" if serial[1] == over[1] else f"DIFFER {serial[1]} vs {over[1]}"
        print(f"{kernel:<16} {serial[0]:>11.1f} {over[0]:>12.1f} {over[0] / serial[0]:>6.2f} "
              f"{over[2]:>12}  {same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
