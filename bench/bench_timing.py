"""Detailed-mode guest MIPS, side by side with trace mode and QEMU's own cache plugin.

For riscv STREAM and GUPS with 1 and 4 harts, in one run:

(a) patched QEMU with QEMU's contrib cache plugin (``libcache.so``: L1I,
    L1D and L2 of the same sizes as cosim's defaults, LRU, no timing),
(b) cosim trace mode (the functional path alone: every memory access and
    instruction-fetch line reaches the bridge, no timing model),
(c) cosim detailed mode in the exact order (``cosim run --timing --order
    exact``: caches with MESI, the prefetchers, memory controllers and the
    interval core model; one vCPU's turn per bridge command),
(d) the same in round order (``--order round``: one command carries a
    turn of every vCPU due in a window, and QEMU runs the next round while
    the model feeds the last).

Every column is the wall time of the whole command as a user runs it
(QEMU start-up, Python start-up and loading the compiled kernels
included); the ratios are (b)/(a), and (c)/(b) and (d)/(b), detailed
against trace. Then the same (b), (c) and (d) for x86 Linux with 2 and 4 busy vCPUs (the
``threads`` workload, private slices, from snapshots booted in fast mode
for this run, so its counts exclude the restore), and a profile of
detailed STREAM runs with 1 and 4 harts in both orders: the share of wall time in the
bridge (QEMU and the plugin producing the trace, and the round trips), in
the compiled timing kernels, and in SimPy and the Python between them
(QEMU's own work shows in the bridge share only where the model is not
running meanwhile: see bench_overlap.py).

    .venv/bin/python bench/bench_timing.py [--repeat 1] [--quantum 1000] [--profile-only] [--no-linux]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim import build, paths, quantum  # noqa: E402
from cosim.boards import VirtBoard, roi_addresses  # noqa: E402
from cosim.libqflex_bridge import Bridge, QemuConfig  # noqa: E402
from cosim.timing import config as timing_config  # noqa: E402
from cosim.timing import core, engine, rounds, state  # noqa: E402

# about 100-150 M instructions each, so start-up is a few percent
WORKLOADS = {"stream": "stream-n1m-r8", "gups": "gups-ws16m-n8m"}
RAM_BASE, RAM_SIZE = VirtBoard.RAM_BASE, 1 << 30
# Linux: (vCPUs, threads arguments); every thread updates its own 4 MiB slice
LINUX = ((2, "-t 2 -m private -s 8M -n 1M"), (4, "-t 4 -m private -s 16M -n 500k"))


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def qemu_with_cache_plugin(kernel: Path, smp: int, q: int) -> list[str]:
    """The bridge's QEMU command line with QEMU's cache plugin in place of cosim's."""
    cfg = timing_config.load()
    libcache = build.ensure_contrib_plugin(paths.qemu_build(), "cache")
    opts = [f"cores={smp}", "evict=lru", "l2=on",
            f"dcachesize={cfg.l1d.size_kib * 1024}", f"dassoc={cfg.l1d.ways}",
            f"icachesize={cfg.l1i.size_kib * 1024}", f"iassoc={cfg.l1i.ways}",
            f"l2cachesize={cfg.l2.size_kib * 1024}", f"l2assoc={cfg.l2.ways}"]
    cmd = Bridge(QemuConfig(kernel=kernel, smp=smp, quantum=q)).command_line()
    i = cmd.index("-plugin")
    cmd[i + 1] = f"{libcache}," + ",".join(opts)
    i = cmd.index("-qmp")
    del cmd[i:i + 2]
    return cmd


def cosim_cmd(kernel: str, smp: int, q: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cosim.cli", "run", "--kernel", kernel, "--smp", str(smp),
            "--quantum", str(q), *extra]


def instructions(kernel: str, smp: int, q: int) -> int:
    """Guest instructions of a run (fast mode; every mode executes the same ones)."""
    with Bridge(QemuConfig(kernel=build.guest_elf(kernel), smp=smp, quantum=q,
                           mode="fast")) as bridge:
        schedule = quantum.Schedule(smp)
        quantum.run_round_robin(bridge, schedule)
        return schedule.total


def linux_mips(root: Path, snapshot: str, args: str, *extra: str) -> tuple[float, float]:
    """(instructions of the run, MIPS over the run's own wall time) of a Linux workload."""
    proc = subprocess.run([sys.executable, "-m", "cosim.cli", "run", "--snapshot", snapshot,
                           "--snapshot-dir", str(root), "--workload", "threads", "--args", args,
                           "--json", *extra], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"cosim run --snapshot {snapshot} failed: {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    return out["session_insns"], out["session_insns"] / out["wall_seconds"] / 1e6


def linux_rows(repeat: int) -> None:
    """Trace and detailed MIPS of Linux with 2 and 4 busy vCPUs."""
    root = Path(tempfile.mkdtemp(prefix="cosim-bench-timing-"))
    print(f"\nx86 Linux, threads workload (one busy thread per vCPU), best of {repeat}")
    print(f"{'vCPUs':>5} {'args':<30} {'Minsns':>7} | {'(b) trace':>9} | "
          f"{'(c) exact':>9} {'c/b':>6} | {'(d) round':>9} {'d/b':>6}")
    for smp, args in LINUX:
        name = f"boot{smp}"
        subprocess.run([sys.executable, "-m", "cosim.cli", "boot", "--smp", str(smp), "--save",
                        name, "--snapshot-dir", str(root)], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        insns, trace = max((linux_mips(root, name, args, "--mode", "trace")
                            for _ in range(repeat)), key=lambda r: r[1])
        exact, rnd = (max((linux_mips(root, name, args, "--timing", "--order", order)
                           for _ in range(repeat)), key=lambda r: r[1])[1]
                      for order in ("exact", "round"))
        print(f"{smp:>5} {args:<30} {insns / 1e6:>7.1f} | {trace:>9.1f} | {exact:>9.1f} "
              f"{exact / trace:>6.2f} | {rnd:>9.1f} {rnd / trace:>6.2f}", flush=True)


def profile(kernel: str, q: int, smp: int, order: str) -> None:
    """Where the wall time of one detailed run in ``order`` goes."""
    spent = {"bridge": 0.0, "kernels": 0.0}
    # the methods that run the compiled kernels: a turn's feed, and a round's
    feeds = [(engine.TimingRun, "_feed_report"), (rounds.RoundRun, "_feed_round")]
    real = [getattr(cls, name) for cls, name in feeds]
    run_cls = rounds.RoundRun if order == "round" else engine.TimingRun

    def clocked(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    path = build.guest_elf(kernel)
    model = state.build(timing_config.load(), smp, [(RAM_BASE, RAM_SIZE)],
                        roi=roi_addresses(path))
    for (cls, name), fn in zip(feeds, real):
        setattr(cls, name, clocked(fn, "kernels"))
    try:
        started = time.perf_counter()
        with Bridge(QemuConfig(kernel=path, smp=smp, quantum=q, mode="trace",
                                clock="model")) as bridge:
            for name in ("step", "rr", "send_step", "send_round", "finish"):
                setattr(bridge, name, clocked(getattr(bridge, name), "bridge"))
            schedule = quantum.Schedule(smp)
            run_cls(bridge, schedule, model).run()
        wall = time.perf_counter() - started
    finally:
        for (cls, name), fn in zip(feeds, real):
            setattr(cls, name, fn)
    rest = wall - spent["bridge"] - spent["kernels"]
    records = int(sum(model.K.scal[:, k].sum() for k in (core.T_LOADS, core.T_STORES,
                                                        core.T_FETCHES)))
    print(f"\nprofile: {kernel}, {smp} hart(s), {order} order, quantum {q}: {schedule.total / 1e6:.1f} M insns, "
          f"{records / 1e6:.1f} M trace records, {wall:.1f} s, {schedule.total / wall / 1e6:.1f} MIPS")
    print(f"  bridge (waiting for QEMU, hand-off)    {spent['bridge']:6.1f} s "
          f"{spent['bridge'] / wall:6.1%}")
    print(f"  timing kernels (numba)                  {spent['kernels']:6.1f} s "
          f"{spent['kernels'] / wall:6.1%}  = {spent['kernels'] / records * 1e9:.0f} ns per record")
    print(f"  SimPy, Python, start-up and exit        {rest:6.1f} s {rest / wall:6.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest counts")
    parser.add_argument("--quantum", type=int, default=1000)
    parser.add_argument("--profile-only", action="store_true", help="skip the MIPS tables")
    parser.add_argument("--no-linux", action="store_true", help="skip the Linux rows")
    args = parser.parse_args()
    q = args.quantum
    if args.profile_only:
        profiles(q)
        return 0
    best = lambda cmd: min(timed(cmd) for _ in range(args.repeat))  # noqa: E731
    print(f"quantum {q}, best of {args.repeat}; MIPS = guest instructions / wall second")
    print(f"{'workload':<8} {'harts':>5} {'Minsns':>7} | {'(a) qemu+libcache':>17} | "
          f"{'(b) trace':>9} {'b/a':>6} | {'(c) exact':>9} {'c/b':>6} | "
          f"{'(d) round':>9} {'d/b':>6}")
    for name, kernel in WORKLOADS.items():
        elf = build.guest_elf(kernel)
        for smp in (1, 4):
            insns = instructions(kernel, smp, q)
            walls = [best(qemu_with_cache_plugin(elf, smp, q)),
                     best(cosim_cmd(kernel, smp, q, "--mode", "trace")),
                     best(cosim_cmd(kernel, smp, q, "--timing", "--order", "exact")),
                     best(cosim_cmd(kernel, smp, q, "--timing", "--order", "round"))]
            mips = [insns / w / 1e6 for w in walls]
            print(f"{name:<8} {smp:>5} {insns / 1e6:>7.1f} | {mips[0]:>17.1f} | "
                  f"{mips[1]:>9.1f} {mips[1] / mips[0]:>6.2f} | {mips[2]:>9.1f} "
                  f"{mips[2] / mips[1]:>6.2f} | {mips[3]:>9.1f} {mips[3] / mips[1]:>6.2f}",
                  flush=True)
    if not args.no_linux:
        linux_rows(args.repeat)
    profiles(q)
    return 0


def profiles(q: int) -> None:
    """STREAM with 1 hart (one order: a lone vCPU runs the same batches in both) and 4 in both."""
    profile(WORKLOADS["stream"], q, 1, "exact")
    for order in ("exact", "round"):
        profile(WORKLOADS["stream"], q, 4, order)


if __name__ == "__main__":
    sys.exit(main())
