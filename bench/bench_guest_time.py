"""The guest in simulated time: what it costs, measured side by side in one run.

    .venv/bin/python bench/bench_guest_time.py [--boot] [--repeat N]

0. Fidelity: a pointer chase over 32 MiB timed by the guest itself
   (riscv ``rdtime``, Linux ``clock_gettime``), against the model's own
   figure for that loop (riscv: ROI cycles / loads; Linux: the cycles 100k
   more steps cost), DRAM and CXL.
1. Linux (2 vCPUs: one runs the workload, one idles) from a fresh
   ``boot_done``: guest MIPS in trace mode (the functional path alone) and
   under ``--timing`` (the guest's clock follows the model, the idle vCPU
   sleeps until an interrupt or a timer can wake it), and their ratio.
   MIPS = the run's guest instructions / the run's wall time (restore to
   exit, as ``cosim run`` reports it; start-up is the same for both).
2. An idle guest: ``nap 1`` (sleep one second) under ``--timing``: the
   simulated time it takes and the wall time per simulated second.
3. With ``--boot``: ``cosim boot --timing`` (the boot under the timing
   model, so ``boot_done`` has warm caches): wall time, guest instructions
   and simulated seconds, next to the same boot in fast mode.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim import snapshot as snap  # noqa: E402
from cosim.timing import config as timing_config  # noqa: E402

WORKLOADS = (("gups", "-s 16M -n 2M"), ("stream", "-s 16M -n 4"), ("pchase", "-s 16M -n 2M"))


def cosim(*args: str, summary: bool = True) -> dict:
    """Run the cosim command line; its JSON summary (``cosim run --json``), or {}."""
    proc = subprocess.run([sys.executable, "-m", "cosim.cli", *args,
                           *(["--json"] if summary else [])],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"cosim {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout) if summary else {}


def mips(s: dict) -> float:
    return s["session_insns"] / s["wall_seconds"] / 1e6


def figure(s: dict, key: str) -> float:
    """``key=X`` from the guest's last RESULT line that has it."""
    for line in reversed(s["guest_results"]):
        m = re.search(rf"\b{key}=([\d.]+)", line)
        if m:
            return float(m.group(1))
    sys.exit(f"no {key}= in {s['guest_results']}")


def fidelity(d: tuple[str, ...]) -> None:
    """The guest's own latency measurement next to the model's."""
    ghz = timing_config.load().core.frequency_ghz
    print("pointer chase over 32 MiB: ns per load as the guest's clock measures it, "
          "and as the model charged it")
    print(f"{'guest':<34} {'guest ns':>9} {'model ns':>9} {'error':>7}")
    rows = []
    for preset in ("dram-only", "cxl-direct"):
        s = cosim("run", "--kernel", "pchase-ws33554432-it100000", "--smp", "1", "--memory",
                  "256M", "--timing", "--preset", preset)
        model = s["timing"]["roi"]["cycles"] / figure(s, "loads") / ghz
        rows.append((f"riscv bare metal, {preset}", figure(s, "ns_per_load"), model))
    for node, what in ((0, "DRAM"), (1, "CXL")):
        runs = [cosim("run", "--snapshot", "boot_done", *d, "--workload", "pchase", "--args",
                      f"-s 32M -n {n}", "--numa", f"membind={node}", "--timing")
                for n in (100_000, 200_000)]
        model = (runs[1]["cycles"] - runs[0]["cycles"]) / 100_000 / ghz
        rows.append((f"x86 Linux, node {node} ({what})", figure(runs[1], "ns_per_load"), model))
    for name, guest, model in rows:
        print(f"{name:<34} {guest:>9.2f} {model:>9.2f} {(guest - model) / model:>+7.1%}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest counts")
    parser.add_argument("--boot", action="store_true", help="also time cosim boot --timing")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cosim-bench-time-"))
    d = ("--snapshot-dir", str(root))
    cosim("boot", "--save", "boot_done", *d, summary=False)
    fidelity(d)

    print("Linux, 2 vCPUs (one busy, one idle), from boot_done; best of", args.repeat)
    print(f"{'workload':<30} {'Minsns':>7} {'trace MIPS':>11} {'timing MIPS':>12} {'ratio':>6} "
          f"{'sim ms':>8} {'guest clock ms':>15}")
    for name, wargs in WORKLOADS:
        run = ("run", "--snapshot", "boot_done", *d, "--workload", name, "--args", wargs)
        trace = max((cosim(*run, "--mode", "trace") for _ in range(args.repeat)), key=mips)
        timing = max((cosim(*run, "--timing") for _ in range(args.repeat)), key=mips)
        clock = timing["timing"]["clock"]
        print(f"{name + ' ' + wargs:<30} {timing['session_insns'] / 1e6:>7.1f} "
              f"{mips(trace):>11.2f} {mips(timing):>12.2f} {mips(timing) / mips(trace):>6.2f} "
              f"{clock['sim_elapsed_s'] * 1e3:>8.3f} {clock['guest_elapsed_s'] * 1e3:>15.3f}",
              flush=True)

    nap = cosim("run", "--snapshot", "boot_done", *d, "--workload", "nap", "--args", "1",
                "--timing")
    zero = cosim("run", "--snapshot", "boot_done", *d, "--workload", "nap", "--args", "0",
                 "--timing")
    sim = nap["timing"]["clock"]["sim_elapsed_s"] - zero["timing"]["clock"]["sim_elapsed_s"]
    wall = nap["wall_seconds"] - zero["wall_seconds"]
    print(f"\nidle guest: nap 1 takes {sim:.6f} s simulated (nap 1 minus nap 0), "
          f"{wall:.2f} s wall: {wall / sim:.2f} s wall per simulated second; "
          f"{nap['session_insns'] - zero['session_insns']:,} instructions; guest says "
          f"{[r for r in nap['guest_results'] if 'nap' in r][-1]}")

    if args.boot:
        print("\nboot to COSIM-READY and save (image cached)")
        print(f"{'mode':<8} {'wall s':>8} {'guest insns':>14} {'MIPS':>6} {'sim s':>8}")
        for mode, extra in (("fast", ()), ("timing", ("--timing",))):
            t0 = time.perf_counter()
            cosim("boot", "--save", f"boot_{mode}", *d, *extra, summary=False)
            wall = time.perf_counter() - t0
            m = snap.Store(root).load(f"boot_{mode}").manifest
            sim = f"{m['cycles'] / (timing_config.load().core.frequency_ghz * 1e9):.3f}" \
                if m["cycles"] else "-"
            print(f"{mode:<8} {wall:>8.1f} {m['total_insns']:>14,} "
                  f"{m['total_insns'] / wall / 1e6:>6.2f} {sim:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
