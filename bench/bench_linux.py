"""Linux guest: boot-and-save time, restore time, and guest MIPS per memory path.

    .venv/bin/python bench/bench_linux.py

1. ``cosim boot --save`` wall time (image cached), for the plain two-node
   machine and the one with QEMU's cxl-type3 device (target: <= 120 s).
2. Restore: from launching QEMU with -loadext until the plugin waits for its
   first command, next to a plain launch of the same machine (target: <= 5 s).
3. Guest MIPS of one workload bound to node 0 (DRAM), node 1 (the CPU-less
   node cosim models as CXL: plain RAM to QEMU) and node 2 (the cxl-type3
   region: QEMU serves every access through MMIO callbacks), in fast mode,
   all from the cxl boot snapshot, side by side in this run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim import snapshot as snap  # noqa: E402
from cosim.libqflex_bridge import Bridge, QemuConfig  # noqa: E402
from cosim.linux_flow import board_of  # noqa: E402
from cosim.linux_machine import IDLE_COMMAND  # noqa: E402

WORKLOAD = ("stream", "-s 16M -n 2")


def cosim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosim.cli", *args], capture_output=True,
                          text=True, cwd=REPO)


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    proc = cosim(*args)
    if proc.returncode != 0:
        sys.exit(f"cosim {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.perf_counter() - t0


def launch_seconds(s: snap.Snapshot, restore: bool) -> float:
    """QEMU launch until the first command ran, with or without -loadext."""
    m = s.manifest
    config = QemuConfig(kernel=Path(m["guest"]["kernel"]), smp=m["machine"]["smp"],
                        quantum=m["quantum"], memory=m["machine"]["memory"],
                        board=board_of(s, IDLE_COMMAND),
                        loadext=s.path if restore else None)
    t0 = time.perf_counter()
    with Bridge(config, console=Path(tempfile.mktemp())) as bridge:
        if restore:
            import msgpack
            bridge.load_plugin_state(msgpack.unpackb(s.read(snap.PLUGIN_STATE)))
        bridge.step(0, 1)
        return time.perf_counter() - t0


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cosim-bench-linux-"))
    cosim("guest", "build")     # not timed: cached after the first time
    rows = []
    for name, extra in (("boot_plain", []), ("boot_cxl", ["--cxl"])):
        secs = timed("boot", "--save", name, "--snapshot-dir", str(root), *extra)
        s = snap.Store(root).load(name)
        rows.append((name, secs, s.manifest["total_insns"], snap.size_on_disk(s.path),
                     launch_seconds(s, True), launch_seconds(s, False)))
    print("boot and save (image cached), restore = QEMU launch with -loadext to first command")
    print(f"{'snapshot':<12} {'boot+save s':>12} {'guest insns':>14} {'MiB on disk':>12} "
          f"{'restore s':>10} {'plain launch s':>15}")
    for name, secs, insns, size, restore, plain in rows:
        print(f"{name:<12} {secs:>12.1f} {insns:>14,} {size / 2**20:>12.1f} {restore:>10.3f} "
              f"{plain:>15.3f}")

    print(f"\nguest MIPS of {WORKLOAD[0]} {WORKLOAD[1]} by memory node (fast mode, from boot_cxl)")
    print(f"{'node':<28} {'insns':>14} {'wall s':>8} {'MIPS':>8} {'vs node 0':>10}")
    base = None
    for node, what in ((0, "DRAM"), (1, "CPU-less node (cosim CXL)"), (2, "cxl-type3 (MMIO)")):
        proc = cosim("run", "--snapshot", "boot_cxl", "--snapshot-dir", str(root), "--json",
                     "--workload", WORKLOAD[0], "--args", WORKLOAD[1], "--numa", f"membind={node}")
        if proc.returncode != 0:
            sys.exit(f"node {node}: {proc.stderr.strip()}")
        s = json.loads(proc.stdout)
        mips = s["session_insns"] / s["wall_seconds"] / 1e6
        base = base or mips
        print(f"{node} {what:<26} {s['session_insns']:>14,} {s['wall_seconds']:>8.1f} "
              f"{mips:>8.1f} {mips / base:>9.2f}x")


if __name__ == "__main__":
    main()
