"""What the CHMU costs, and how good its hot lists are for the counters it has.

(0) Cost in the kernels alone: the timing kernels replay recorded calls of
    a real run (bench_kernels' captures: GUPS and STREAM, 1 hart) on a
    cxl-direct model with the CHMU off and on, alternating in one process,
    and the CHMU's epochs close as the engine closes them (after each call,
    at the cores' time). No QEMU and no bridge share the time, so the ratio
    is the CHMU's share of the model's own work: an upper bound of what it
    costs a whole run, measured with far less noise than (1) on a shared
    host.
(1) Cost: detailed-mode MIPS (``cosim run --timing``, round order) of riscv
    GUPS, hotcold and STREAM with the CHMU off, on with its default tracker
    (space-saving, 1024 counters) and on with every tracker at once, side
    by side in one run (``--repeat`` rounds of the three, interleaved): the
    best MIPS of each, and the median over rounds of each round's ratio,
    by wall time and by CPU time (cosim and its QEMU: what other tenants of
    the host take shows less there). The preset
    is cxl-direct: all memory is CXL, so every LLC miss and writeback
    reaches a CHMU (the most work it can be given).
(3) With ``--linux``: the issue's own scenario. A booted Linux guest (2
    vCPUs, DRAM node 0, the CPU-less CXL node 1) runs hotcold (128 MiB, a
    16 MiB hot set) bound to node 1 under the timing model, the CHMU off and
    on with its defaults, interleaved: the device sees only node 1's traffic,
    among the kernel's and the other vCPU's work.
(2) Accuracy against the counter budget: for each workload and each budget
    k, one run with space-saving (k counters), count-min (4 rows of k/4) and
    the oracle; the mean precision and recall of their hot lists (4 KiB
    units, 1 ms epochs, lists of 256) against the oracle's. Written as a
    table and as ``docs/chmu_accuracy.png``.

    .venv/bin/python bench/bench_chmu.py [--repeat 2] [--budgets 64,256,1024,4096]
        [--workloads gups,hotcold,stream] [--no-cost | --no-accuracy | --kernels-only] [--linux]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import time  # noqa: E402

import bench_kernels  # noqa: E402
from cosim import build  # noqa: E402
from cosim.boards import roi_addresses  # noqa: E402
from cosim.timing import chmu_spec, core, state  # noqa: E402
from cosim.timing import config as timing_config  # noqa: E402

# 1 hart, 40-100 M instructions each; working sets well beyond the 8 MiB LLC
WORKLOADS = {"gups": "gups-ws64m-n2m", "hotcold": "hotcold-ws64m-hot4m-n2m",
             "stream": "stream-n1m-r8"}
COST = {"off": None, "space-saving": "", "all trackers":
        "tracker=space-saving+oracle+count-min+sample"}
PLOT = REPO / "docs" / "chmu_accuracy.png"


def run(kernel: str, chmu: str | None) -> dict:
    """One ``cosim run --json``; adds ``cpu_s``: the CPU seconds of cosim and its QEMU."""
    cmd = [sys.executable, "-m", "cosim.cli", "run", "--kernel", kernel, "--smp", "1",
           "--timing", "--preset", "cxl-direct", "--json"]
    if chmu is not None:
        cmd += ["--chmu", chmu]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    out = json.loads(proc.stdout)
    out["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return out


#: bench_kernels captures replayed by (0)
REPLAYS = (("gups 1h", "gups-ws16m-n8m", 1), ("stream 1h", "stream-n1m-r8", 1))


def replay(calls: list, kernel: str, chmu: str | None) -> tuple[float, int]:
    """(seconds in the kernels and at epoch ends, epochs closed) of one replay of ``calls``."""
    cfg = timing_config.load("cxl-direct")
    if chmu is not None:
        cfg = chmu_spec.apply(cfg, chmu)
    model = state.build(cfg, 1, [(bench_kernels.RAM_BASE, bench_kernels.RAM_SIZE)],
                        roi=roi_addresses(build.guest_elf(kernel)))
    K, H, monitor = model.K, model.H, model.chmu
    spent = 0.0
    for name, args in calls:
        args = tuple(a.copy() if hasattr(a, "copy") else a for a in args)
        t = time.perf_counter()
        getattr(core, name)(K, H, *args)
        if monitor is not None:
            monitor.advance(int(K.scal[:, core.T_TIME].max()))
        spent += time.perf_counter() - t
    return spent, monitor.epoch if monitor is not None else 0


def kernel_cost(repeat: int, insns: int) -> None:
    print(f"(0) the kernels alone (replayed calls, cxl-direct), best of {repeat}, alternating")
    print(f"{'case':<10} {'Mrec':>6} " + " ".join(f"{k + ' ns/rec':>20}" for k in COST)
          + "   on/off: " + " ".join(f"{k:>13}" for k in list(COST)[1:]) + "  epochs")
    for label, kernel, smp in REPLAYS:
        calls = bench_kernels.load(label, kernel, smp, insns)
        nrec = sum(bench_kernels._records(c) for c in calls)
        best: dict[str, float] = {}
        epochs = 0
        for _ in range(repeat):
            for name, spec in COST.items():
                seconds, n = replay(calls, kernel, spec)
                epochs = max(epochs, n)
                best[name] = min(best.get(name, seconds), seconds)
        off = best["off"]
        print(f"{label:<10} {nrec / 1e6:>6.1f} " + " ".join(
            f"{best[k] / nrec * 1e9:>20.1f}" for k in COST) + "           " + " ".join(
            f"{off / best[k]:>13.2f}" for k in list(COST)[1:]) + f"  {epochs:>6}", flush=True)


def cost(repeat: int, names: list[str]) -> None:
    """Whole runs, off and on interleaved: best MIPS, and the median of each round's ratio
    by wall time and by CPU time (cosim and QEMU; less moved by other tenants)."""
    print(f"(1) detailed-mode MIPS, 1 hart, cxl-direct, {repeat} rounds (off, on, all: interleaved)")
    on = list(COST)[1:]
    print(f"{'workload':<9} {'Minsns':>7} " + " ".join(f"{k:>13}" for k in COST)
          + "   on/off best: " + " ".join(f"{k:>13}" for k in on)
          + "   median wall: " + " ".join(f"{k:>13}" for k in on)
          + "   median cpu: " + " ".join(f"{k:>13}" for k in on))
    for name in names:
        kernel = WORKLOADS[name]
        best: dict[str, float] = {}
        wall: dict[str, list[float]] = {k: [] for k in on}
        cpu: dict[str, list[float]] = {k: [] for k in on}
        insns = 0
        for _ in range(repeat):
            rnd = {}
            for label, spec in COST.items():
                rnd[label] = out = run(kernel, spec)
                insns = out["session_insns"]
                best[label] = max(best.get(label, 0.0), out["mips"])
            for k in on:
                wall[k].append(rnd[k]["mips"] / rnd["off"]["mips"])
                cpu[k].append(rnd["off"]["cpu_s"] / rnd[k]["cpu_s"])
        off = best["off"]
        print(f"{name:<9} {insns / 1e6:>7.1f} " + " ".join(f"{best[k]:>13.1f}" for k in COST)
              + "                " + " ".join(f"{best[k] / off:>13.2f}" for k in on)
              + "                " + " ".join(f"{statistics.median(wall[k]):>13.2f}" for k in on)
              + "               " + " ".join(f"{statistics.median(cpu[k]):>13.2f}" for k in on),
              flush=True)


#: (3): the issue's own scenario, hotcold bound to the CPU-less CXL node of a Linux guest
LINUX_HOTCOLD = "-s 128M -H 16M -n 1M"


def linux_cost(repeat: int) -> None:
    """A booted Linux guest (2 vCPUs, DRAM node 0, CXL node 1) runs hotcold bound to node 1
    under the timing model, the CHMU off and on (default spec), interleaved."""
    with tempfile.TemporaryDirectory(prefix="bench-chmu-") as tmp:
        boot = subprocess.run([sys.executable, "-m", "cosim.cli", "boot", "--save", "boot_done",
                               "--snapshot-dir", tmp], capture_output=True, text=True, cwd=REPO)
        if boot.returncode != 0:
            sys.exit(f"cosim boot failed: {boot.stderr.strip()[-500:]}")
        print(f"(3) Linux guest, hotcold {LINUX_HOTCOLD} bound to the CXL node (1), 2 vCPUs, "
              f"--timing; {repeat} rounds, off and on interleaved")
        cmd = [sys.executable, "-m", "cosim.cli", "run", "--snapshot", "boot_done",
               "--snapshot-dir", tmp, "--json", "--timing", "--workload", "hotcold",
               "--args", LINUX_HOTCOLD, "--numa", "membind=1"]
        wall, cpu, mips = [], [], {"off": 0.0, "on": 0.0}
        for _ in range(repeat):
            rnd = {}
            for label, extra in (("off", []), ("on", ["--chmu", ""])):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                proc = subprocess.run(cmd + extra, capture_output=True, text=True, cwd=REPO)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if proc.returncode != 0:
                    sys.exit(f"cosim run failed: {proc.stderr.strip()[-500:]}")
                out = json.loads(proc.stdout)
                out["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                rnd[label] = out
                mips[label] = max(mips[label], out["mips"])
            wall.append(rnd["on"]["mips"] / rnd["off"]["mips"])
            cpu.append(rnd["off"]["cpu_s"] / rnd["on"]["cpu_s"])
        insns = rnd["on"]["session_insns"]
        print(f"{'Minsns':>7} {'off MIPS':>9} {'on MIPS':>8}   on/off best  median wall  median cpu")
        print(f"{insns / 1e6:>7.1f} {mips['off']:>9.1f} {mips['on']:>8.1f}   "
              f"{mips['on'] / mips['off']:>11.2f}  {statistics.median(wall):>11.2f}  "
              f"{statistics.median(cpu):>10.2f}", flush=True)


def accuracy(budgets: list[int]) -> dict:
    print("\n(2) hot-list accuracy against the oracle: mean precision / recall over epochs "
          "(4 KiB units, 1 ms epochs, hot lists of 256)")
    print(f"{'workload':<9} {'counters':>8} | {'space-saving':>13} | {'count-min':>13} | "
          f"{'oracle coverage':>15}")
    table: dict = {}
    for name, kernel in WORKLOADS.items():
        for k in budgets:
            spec = (f"tracker=space-saving+count-min+oracle,counters={k},depth=4,"
                    f"width={max(16, k // 4)},capacity=256,unit=4K,epoch=1ms")
            acc = run(kernel, spec)["timing"]["chmu"]["accuracy"]
            table.setdefault(name, {})[k] = acc
            ss, cm = acc["space-saving"], acc["count-min"]
            print(f"{name:<9} {k:>8} | {ss['precision']:>6.3f} {ss['recall']:>6.3f} | "
                  f"{cm['precision']:>6.3f} {cm['recall']:>6.3f} | "
                  f"{acc['oracle']['coverage']:>15.3f}", flush=True)
    return table


def plot(table: dict, budgets: list[int]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(table), figsize=(4 * len(table), 3.5), sharey=True)
    for ax, (name, rows) in zip(axes, table.items()):
        for tracker, marker in (("space-saving", "o"), ("count-min", "s")):
            ax.plot(budgets, [rows[k][tracker]["precision"] for k in budgets], marker=marker,
                    label=f"{tracker} precision")
            ax.plot(budgets, [rows[k][tracker]["recall"] for k in budgets], marker=marker,
                    linestyle="--", alpha=0.6, label=f"{tracker} recall")
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("counters")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("against the oracle")
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    print(f"\nwrote {PLOT.relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--budgets", default="64,256,1024,4096")
    ap.add_argument("--no-cost", action="store_true", help="only the accuracy part")
    ap.add_argument("--no-accuracy", action="store_true", help="only the cost parts")
    ap.add_argument("--kernels-only", action="store_true", help="only part (0)")
    ap.add_argument("--insns", type=int, default=20_000_000,
                    help="instructions per capture replayed in (0)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="cost part: a comma-separated subset of " + ", ".join(WORKLOADS))
    ap.add_argument("--linux", action="store_true",
                    help="also (3): the CHMU's cost on a Linux guest (boots one, ~1 min)")
    args = ap.parse_args()
    budgets = [int(x) for x in args.budgets.split(",")]
    names = args.workloads.split(",")
    for name in names:
        if name not in WORKLOADS:
            ap.error(f"--workloads {name}: one of {', '.join(WORKLOADS)}")
    for kernel in WORKLOADS.values():
        build.guest_elf(kernel)
    if not args.no_cost:
        kernel_cost(args.repeat, args.insns)
        if args.kernels_only:
            return
        print()
        cost(args.repeat, names)
        if args.linux:
            print()
            linux_cost(args.repeat)
    if not args.no_accuracy:
        plot(accuracy(budgets), budgets)


if __name__ == "__main__":
    main()
