"""Golden cycle counts: every tiny guest under every timing preset.

``cosim regress`` runs each case through ``cosim run --timing --json`` in a
fresh process and compares the cycle counts with the file in
``tests/regression/`` exactly; ``--update`` rewrites the files. A
difference prints one line per changed figure (case, field, golden, now).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from . import paths
from .errors import CosimError
from .timing.config import PRESETS

GOLDEN_DIR = paths.REPO / "tests" / "regression"
#: ~100k-instruction variants of every guest (guests/riscv/Makefile TINY), 4 harts
GUESTS = ("pchase-ws16384-it10000", "stream-n2048-r2", "gups-ws16384-n2048", "spinlock-n200",
          "atomic-n1500", "false_sharing-n2500", "false_sharing_padded-n2500",
          "prodcons-n1000-s16")
SMP, QUANTUM = 4, 1000


def figures(doc: dict) -> dict:
    """The numbers a golden file pins: every cycle count and the traffic per tier."""
    t = doc["timing"]
    return {
        "cycles": t["cycles"],
        "instructions": doc["total_insns"],
        "cores": [{k: c[k] for k in ("core", "cycles", "busy_cycles", "idle_cycles",
                                     "instructions")} for c in t["cores"]],
        "memory": {name: {k: m[k] for k in ("reads", "writes")} for name, m in t["memory"].items()},
    }


def run_case(guest: str, preset: str, config: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "cosim.cli", "run", "--kernel", guest, "--smp", str(SMP),
           "--quantum", str(QUANTUM), "--timing", "--preset", preset, "--json"]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=paths.REPO)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise CosimError(f"regress {guest} x {preset}: cosim run failed: {tail[0]}")
    return figures(json.loads(proc.stdout))


def diff(case: str, golden: dict, now: dict, prefix: str = "") -> list[str]:
    """Readable differences between two figure trees."""
    out = []
    if isinstance(golden, dict) and isinstance(now, dict):
        for key in sorted(set(golden) | set(now)):
            out += diff(case, golden.get(key), now.get(key), f"{prefix}.{key}" if prefix else key)
    elif isinstance(golden, list) and isinstance(now, list) and len(golden) == len(now):
        for i, (g, n) in enumerate(zip(golden, now)):
            out += diff(case, g, n, f"{prefix}[{i}]")
    elif golden != now:
        delta = f" ({now - golden:+d})" if isinstance(golden, int) and isinstance(now, int) else ""
        out.append(f"{case}: {prefix}: golden {golden}, now {now}{delta}")
    return out


def golden_path(guest: str, preset: str) -> Path:
    return GOLDEN_DIR / f"{guest}.{preset}.json"


def check(config: Path | None = None, update: bool = False,
          cases: list[tuple[str, str]] | None = None) -> list[str]:
    """Run the cases; returns the differences (empty: all match)."""
    problems = []
    for guest, preset in cases or [(g, p) for g in GUESTS for p in PRESETS]:
        now = run_case(guest, preset, config)
        path = golden_path(guest, preset)
        if update:
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(now, indent=1) + "\n")
            continue
        if not path.is_file():
            problems.append(f"{guest} x {preset}: no golden file {path.name} "
                            f"(run `cosim regress --update`)")
            continue
        problems += diff(f"{guest} x {preset}", json.loads(path.read_text()), now)
    return problems


def run_regress(update: bool) -> int:
    problems = check(update=update)
    if update:
        print(f"wrote {len(GUESTS) * len(PRESETS)} golden files to {GOLDEN_DIR}")
        return 0
    for line in problems:
        print(line)
    print("regress: all cycle counts match" if not problems else
          f"regress: {len(problems)} difference(s)")
    return 1 if problems else 0
