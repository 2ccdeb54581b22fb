"""Wall time of one sweep on 1 and on N local Dask workers, measured side by side in one run.

Runs SPEC (default: examples/cxl_latency_sweep.toml, ten GUPS points from
snapshot ``boot_done``) with ``cosim sweep --workers 1`` and ``--workers N``
into fresh output directories, prints both wall times, their ratio, the
per-point time, and checks that the two tables are byte-identical (the
runs are deterministic wherever they run). Needs the snapshot the spec
names (``cosim boot --save boot_done``).

    .venv/bin/python bench/bench_sweep.py [--spec SPEC] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sweep(spec: Path, out: Path, workers: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cosim.cli", "sweep", str(spec), "--out", str(out),
                    "--workers", str(workers)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "cxl_latency_sweep.toml")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cosim.sweep_spec import load
    points = len(load(args.spec).points)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        one = sweep(args.spec, Path(tmp) / "one", 1)
        many = sweep(args.spec, Path(tmp) / "many", args.workers)
        same = (Path(tmp) / "one" / "results.parquet").read_bytes() == \
            (Path(tmp) / "many" / "results.parquet").read_bytes()
    print(f"{args.spec.name}: {points} points")
    print(f"  1 worker:   {one:7.1f} s  ({one / points:.2f} s per point)")
    print(f"  {args.workers} workers: {many:7.1f} s  ({many / points:.2f} s per point)")
    print(f"  speed-up {one / many:.2f}x on {os.cpu_count()} cores; tables byte-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
