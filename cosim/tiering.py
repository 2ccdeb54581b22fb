"""Tiering experiments: one workload under several page-placement policies, in simulated time.

What the lab notes (seeds/002) do by hand on QEMU's CXL path, as one
command: from a booted Linux snapshot, node 0 (DRAM, with the CPUs) is
filled so that the workload does not fit there and spills to the CPU-less
CXL node 1, and the workload runs once per policy, each run a deterministic
``cosim run --timing`` from the same snapshot:

- ``none``: static placement (NUMA balancing off, no demotion);
- ``numa-balancing``: Linux's tiering mode (``kernel.numa_balancing=2``,
  ``demotion_enabled``), with the kernel's defaults unless a knob is set
  (``KNOBS``). The guest's clocks are simulated time, so scan periods and
  ``hot_threshold_ms`` mean what they mean on hardware;
- ``chmu``: the CHMU-driven promoter of issue 14 (``chmu promote -- CMD``,
  demotion on, NUMA balancing off), the CHMU configured by ``--chmu``.

The guest script prints the vmstat counters of ``VMSTAT`` as RESULT lines
before the workload and after it, so each policy's row has the kernel's own
account of promotions, demotions and hint faults, beside the workload's
figure by the guest clock (``loop_ns`` of its RESULT line) and the model's
DRAM and CXL traffic.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .errors import CosimError
from .linux_flow import result_value

POLICIES = ("none", "numa-balancing", "chmu")

#: counters read from /proc/vmstat before and after the workload (the lab notes' table)
VMSTAT = ("pgpromote_success", "pgpromote_candidate", "pgdemote_kswapd", "pgdemote_direct",
          "numa_hint_faults", "numa_pages_migrated", "pgmigrate_success", "pgmigrate_fail")

_DEBUGFS = "/sys/kernel/debug/sched/numa_balancing"
#: NUMA balancing's knobs --set may change, and where the guest kernel has each
KNOBS = {
    "scan_delay_ms": f"{_DEBUGFS}/scan_delay_ms",
    "scan_period_min_ms": f"{_DEBUGFS}/scan_period_min_ms",
    "scan_period_max_ms": f"{_DEBUGFS}/scan_period_max_ms",
    "scan_size_mb": f"{_DEBUGFS}/scan_size_mb",
    "hot_threshold_ms": f"{_DEBUGFS}/hot_threshold_ms",
    "promote_rate_limit_MBps": "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps",
}
_NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"
_DEMOTION = "/sys/kernel/mm/numa/demotion_enabled"


@dataclass
class Experiment:
    """One workload, the policies to run it under, and the pressure on node 0."""

    workload: str
    args: str
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    pressure: float = 0.9           # share of node 0's free memory taken before the workload
    knobs: dict[str, int] = field(default_factory=dict)


def parse_policies(text: str) -> list[str]:
    """``none,numa-balancing,chmu`` -> the list, each one checked."""
    out = [p.strip() for p in text.split(",") if p.strip()]
    for p in out:
        if p not in POLICIES:
            raise CosimError(f"--policies {text}: unknown policy {p!r} (policies: "
                             f"{', '.join(POLICIES)})")
    if not out or len(set(out)) != len(out):
        raise CosimError(f"--policies {text!r}: want distinct policies from {', '.join(POLICIES)}, "
                         "comma-separated")
    return out


def parse_pressure(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise CosimError(f"--pressure {text}: want the share of node 0's free memory to fill, "
                         "from 0 to below 1 (e.g. 0.9)")
    return value


def parse_knob(text: str) -> tuple[str, int]:
    """``--set KNOB=N`` for NUMA balancing."""
    name, _, value = text.partition("=")
    if name not in KNOBS:
        raise CosimError(f"--set {text}: unknown knob {name!r} (knobs: {', '.join(KNOBS)})")
    if not value.isdigit() or not 0 <= int(value) < 1 << 31:
        raise CosimError(f"--set {text}: want {name}=N, N a whole number")
    return name, int(value)


def _vmstat(phase: str) -> str:
    pattern = "|".join(VMSTAT)
    return (f"echo \"RESULT vmstat phase={phase}$(awk '/^({pattern}) /"
            "{printf \" %s=%s\", $1, $2}' /proc/vmstat)\"")


def guest_script(exp: Experiment, policy: str, workload_cmd: list[str]) -> str:
    """The shell command the guest's init runs for one policy's run."""
    lines = ["mount -t debugfs none /sys/kernel/debug 2>/dev/null"]
    if policy == "numa-balancing":
        lines += [f"echo 2 > {_NUMA_BALANCING}", f"echo true > {_DEMOTION}"]
        lines += [f"echo {v} > {KNOBS[k]}" for k, v in sorted(exp.knobs.items())]
    else:
        lines += [f"echo 0 > {_NUMA_BALANCING}",
                  f"echo {'true' if policy == 'chmu' else 'false'} > {_DEMOTION}"]
    if exp.pressure > 0:
        # take the share of node 0's free memory now, held by a process in the background;
        # preferring node 0 rather than bound to it, so that the kernel's reserve is not
        # fought for (bound, without demotion, the filler is killed for lack of memory)
        lines += ["free=$(awk '/MemFree/ {print $4}' /sys/devices/system/node/node0/meminfo)",
                  f"kb=$(awk -v f=\"$free\" 'BEGIN {{printf \"%d\", f * {exp.pressure}}}')",
                  "[ \"$kb\" -lt 4 ] || numactl --preferred=0 -- /workloads/fill -s \"${kb}K\" -d"
                  " || { echo \"cosim tiering: filling node 0 failed\"; exit 3; }"]
    cmd = workload_cmd
    if policy == "chmu":
        cmd = ["/workloads/chmu", "promote", "--", *workload_cmd]
    lines += [_vmstat("before"), shlex.join(cmd), "rc=$?", _vmstat("after"), "exit $rc"]
    return "\n".join(lines)


def row(policy: str, summary: dict, workload: str, work_key: str) -> dict:
    """One policy's results: the workload's figure, the model's traffic, the kernel's counters."""
    results = summary["guest_results"]
    mine = [r for r in results if r.startswith(f"RESULT {workload} ")]
    vm = {}
    for phase in ("before", "after"):
        line = next((r for r in results if r.startswith(f"RESULT vmstat phase={phase}")), "")
        vm[phase] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d{1,19})", line)
                     if k in VMSTAT}
    delta = {k: vm["after"].get(k, 0) - vm["before"].get(k, 0) for k in VMSTAT}
    mem = summary["timing"]["memory"]
    reads = mem["dram"]["reads"] + mem["cxl"]["reads"]
    promoter = [r for r in results if r.startswith("RESULT chmu ")]
    loop_ns = result_value(mine, "loop_ns")
    work = result_value(mine, work_key)
    out = {
        "policy": policy,
        "loop_ns": loop_ns,
        work_key: work,
        "per_second": work / loop_ns * 1e9 if work and loop_ns else None,
        "cycles": summary["cycles"],
        "seconds": summary["timing"]["seconds"],
        "insns": summary["session_insns"],
        "dram_reads": mem["dram"]["reads"], "dram_writes": mem["dram"]["writes"],
        "cxl_reads": mem["cxl"]["reads"], "cxl_writes": mem["cxl"]["writes"],
        "cxl_share": mem["cxl"]["reads"] / reads if reads else 0.0,
        "migrated_bytes": delta["pgmigrate_success"] * 4096,
        # pages moved to node 0: the kernel's promotions, or the CHMU promoter's moves
        "promoted": delta["pgpromote_success"] + (result_value(promoter, "moved") or 0),
        "vmstat": delta,
        "vmstat_before": vm["before"], "vmstat_after": vm["after"],
        "results": mine,
        "exit_code": summary.get("workload_exit_code"),
    }
    chmu = summary["timing"].get("chmu")
    if chmu is not None:
        out["chmu"] = {"epochs": chmu["epochs"], "accuracy": chmu["accuracy"]}
    return out


def table(rows: list[dict], work_key: str) -> str:
    """The side-by-side comparison ``cosim tiering`` prints."""
    head = (f"{'policy':<15} {work_key:>10} {'loop ms':>9} {'per s':>12} {'vs none':>8} "
            f"{'cycles':>14} {'CXL share':>9} {'promoted':>9} {'migrated':>10} "
            + " ".join(f"{k:>{max(len(k), 8)}}" for k in VMSTAT))
    out = [head]
    base = next((r["per_second"] for r in rows if r["policy"] == "none"), None)
    for r in rows:
        per = r["per_second"]
        ratio = f"{per / base:.2f}x" if per and base else "-"
        out.append(f"{r['policy']:<15} {r[work_key] if r[work_key] is not None else '-':>10} "
                   f"{(r['loop_ns'] or 0) / 1e6:>9.2f} {f'{per:,.0f}' if per else '-':>12} "
                   f"{ratio:>8} {r['cycles']:>14,} {r['cxl_share']:>9.3f} {r['promoted']:>9,} "
                   f"{r['migrated_bytes'] >> 20:>8} M "
                   + " ".join(f"{r['vmstat'][k]:>{max(len(k), 8)},}" for k in VMSTAT))
    return "\n".join(out)
