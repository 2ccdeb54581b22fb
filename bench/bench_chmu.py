"""What the CHMU costs, and how good its hot lists are for the counters it has.

(1) Cost: detailed-mode MIPS (``cosim run --timing``, round order) of riscv
    GUPS, hotcold and STREAM with the CHMU off, on with its default tracker
    (space-saving, 1024 counters) and on with every tracker at once, side
    by side in one run (best of ``--repeat``, runs interleaved). The preset
    is cxl-direct: all memory is CXL, so every LLC miss and writeback
    reaches a CHMU (the most work it can be given).
(2) Accuracy against the counter budget: for each workload and each budget
    k, one run with space-saving (k counters), count-min (4 rows of k/4) and
    the oracle; the mean precision and recall of their hot lists (4 KiB
    units, 1 ms epochs, lists of 256) against the oracle's. Written as a
    table and as ``docs/chmu_accuracy.png``.

    .venv/bin/python bench/bench_chmu.py [--repeat 2] [--budgets 64,256,1024,4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim import build  # noqa: E402

# 1 hart, 40-100 M instructions each; working sets well beyond the 8 MiB LLC
WORKLOADS = {"gups": "gups-ws64m-n2m", "hotcold": "hotcold-ws64m-hot4m-n2m",
             "stream": "stream-n1m-r8"}
COST = {"off": None, "space-saving": "", "all trackers":
        "tracker=space-saving+oracle+count-min+sample"}
PLOT = REPO / "docs" / "chmu_accuracy.png"


def run(kernel: str, chmu: str | None) -> dict:
    cmd = [sys.executable, "-m", "cosim.cli", "run", "--kernel", kernel, "--smp", "1",
           "--timing", "--preset", "cxl-direct", "--json"]
    if chmu is not None:
        cmd += ["--chmu", chmu]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def cost(repeat: int) -> None:
    print(f"(1) detailed-mode MIPS, 1 hart, cxl-direct, best of {repeat}")
    print(f"{'workload':<9} {'Minsns':>7} " + " ".join(f"{k:>13}" for k in COST)
          + "   on/off: " + " ".join(f"{k:>13}" for k in list(COST)[1:]))
    for name, kernel in WORKLOADS.items():
        best: dict[str, float] = {}
        insns = 0
        for _ in range(repeat):
            for label, spec in COST.items():
                out = run(kernel, spec)
                insns = out["session_insns"]
                best[label] = max(best.get(label, 0.0), out["mips"])
        off = best["off"]
        print(f"{name:<9} {insns / 1e6:>7.1f} " + " ".join(f"{best[k]:>13.1f}" for k in COST)
              + "           " + " ".join(f"{best[k] / off:>13.2f}" for k in list(COST)[1:]),
              flush=True)


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
    args = ap.parse_args()
    budgets = [int(x) for x in args.budgets.split(",")]
    for kernel in WORKLOADS.values():
        build.guest_elf(kernel)
    if not args.no_cost:
        cost(args.repeat)
    plot(accuracy(budgets), budgets)


if __name__ == "__main__":
    main()
