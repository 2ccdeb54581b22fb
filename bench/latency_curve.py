"""Latency curve: cycles per dependent load against working-set size.

Runs the pointer-chase guest on one hart under the timing model for
working sets from 4 KiB to 256 MiB, with the ``dram-only`` and
``cxl-direct`` presets, and prints each point next to the configured
load-to-use latency of the level that should serve it. The chart goes to
``docs/latency_curve.png`` (shown in the README).

    .venv/bin/python bench/latency_curve.py [--loads 100000] [--out docs/latency_curve.png]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim.timing import config as timing_config  # noqa: E402

SIZES = ["4k", "16k", "64k", "256k", "1m", "4m", "16m", "64m", "256m"]
PRESETS = {"dram-only": "dram", "cxl-direct": "cxl"}


def level_of(size: str, cfg: timing_config.Config) -> str | None:
    """The level a working set should live in (None: between two levels)."""
    kib = int(size[:-1]) * (1024 if size.endswith("m") else 1)
    if kib <= cfg.l1d.size_kib // 2:
        return "l1"
    if cfg.l1d.size_kib * 2 <= kib <= cfg.l2.size_kib // 2:
        return "l2"
    if cfg.l2.size_kib * 2 <= kib <= cfg.llc.size_kib // 2:
        return "llc"
    if kib >= cfg.llc.size_kib * 32:
        return "memory"
    return None


def cycles_per_load(size: str, preset: str, loads: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-m", "cosim.cli", "run", "--json", "--timing", "--smp", "1",
         "--kernel", f"pchase-ws{size}-it{loads}-solo1", "--preset", preset],
        capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        sys.exit(f"latency_curve: pchase {size} {preset} failed: {proc.stderr.strip()}")
    roi = json.loads(proc.stdout)["timing"]["roi"]
    return roi["cycles"] / loads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=100000, help="dependent loads per point")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "latency_curve.png")
    args = ap.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    print(f"{'preset':<11} {'working set':>11} {'cycles/load':>11} {'level':>7} "
          f"{'configured':>10} {'error':>7}")
    for preset, tier in PRESETS.items():
        cfg = timing_config.load(preset)
        configured = cfg.load_latencies()
        points = []
        for size in SIZES:
            measured = cycles_per_load(size, preset, args.loads)
            points.append(measured)
            level = level_of(size, cfg)
            key = tier if level == "memory" else level
            if key is None:
                print(f"{preset:<11} {size:>11} {measured:>11.1f} {'-':>7}")
            else:
                want = configured[key]
                print(f"{preset:<11} {size:>11} {measured:>11.1f} {key:>7} {want:>10.1f} "
                      f"{(measured - want) / want:>+7.1%}", flush=True)
        ax.plot(SIZES, points, marker="o", label=f"{preset} (measured)")
    for key in ("l1", "l2", "llc", "dram", "cxl"):
        ax.axhline(configured[key], linestyle=":", linewidth=0.8, color="grey")
        ax.annotate(f"{key} {configured[key]:.0f}", (0, configured[key]), xytext=(2, 2),
                    textcoords="offset points", fontsize="small", color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("pointer-chase working set")
    ax.set_ylabel("cycles per dependent load")
    ax.set_title("cosim timing model: load latency (dotted: configured)")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
