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
- ``damon``: DAMON as HMSDK sets it up (its ``gen_migpol.py --demote 0 1
  --promote 1 0 -g``): ``damo args damon`` makes one kdamond per node, a
  physical-address context over node 0 with a ``migrate_cold`` scheme to
  node 1 and one over node 1 with ``migrate_hot`` to node 0, the two are
  joined into one file, and ``damo start FILE`` runs them; ``damo show``
  after the workload, as the lab notes do. HMSDK's intervals (100 ms
  sampling, 2 s aggregation, 20 s updates) are for runs of minutes; its
  ages and quotas are kept in proportion to the aggregation interval
  (``damon_schemes``) and the intervals default to DAMON's own (5 ms,
  100 ms, 1 s), ``--damon-intervals`` to change;
- ``chmu``: the CHMU-driven promoter of issue 14 (``chmu promote -- CMD``,
  demotion on, NUMA balancing off), the CHMU configured by ``--chmu``.

The guest script prints the vmstat counters of ``VMSTAT`` as RESULT lines
before the workload and after it, so each policy's row has the kernel's own
account of promotions, demotions and hint faults, beside the workload's
figure by the guest clock (``loop_ns`` of its RESULT line) and the model's
DRAM and CXL traffic. For the timelines, ``vmlog`` samples the migration
counters every interval of the guest's clock from the script's start, and
the model keeps its traffic per interval of simulated time
(``timing.timeline``): the two clocks are the same one (the guest lives in
simulated time), both counted from the run's start.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .errors import CosimError
from .linux_flow import result_value
from .timing.chmu_spec import time_ns

POLICIES = ("none", "numa-balancing", "damon", "chmu")

#: damo for the damon policy: 2.6.7 is the last release whose ``damo show`` (the command the
#: lab notes use) works; 2.6.8 broke it, 2.7 replaced it by ``damo report access``
DAMO = "damo==2.6.7"
#: Debian packages the damon policy needs beside damo: ``damo show`` pages its output through
#: ``less --RAW-CONTROL-CHARS``, which busybox's less does not take (Debian's, its output not a
#: terminal, prints the text)
DAMON_PACKAGES = ("less",)

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
    #: DAMON's sampling, aggregation and update intervals, microseconds
    damon_us: tuple[int, int, int] = (5_000, 100_000, 1_000_000)
    interval_us: int = 5_000        # of the timelines: vmlog's samples, the model's intervals
    vmlog: bool = True              # the guest has vmlog (images before it do not)


def check_damo(manifest: dict, snapshot: str) -> None:
    """The damon policy runs ``damo show``: the guest needs ``DAMO`` and ``DAMON_PACKAGES``
    (one line if it has not)."""
    name, _, version = DAMO.partition("==")
    wheels = [w["wheel"] for w in manifest.get("pip", []) if w["wheel"].startswith(f"{name}-")]
    packages = manifest.get("extra_packages", {}).get("requested", [])
    missing = [p for p in DAMON_PACKAGES if p not in packages]
    if not any(w.startswith(f"{name}-{version}-") for w in wheels) or missing:
        has = (f"has damo {wheels[0].split('-')[1]}" if wheels else "has no damo") + (
            f" and no {', '.join(missing)}" if missing else "")
        raise CosimError(f"--policies damon: snapshot {snapshot}'s guest {has}; the damon policy "
                         f"runs {DAMO} (it has `damo show`): boot one with `cosim boot "
                         f"{boot_options()} --save NAME` and pass --snapshot NAME")


def boot_options() -> str:
    """``cosim boot`` options that give a guest what the damon policy runs."""
    return " ".join([f"--pip {DAMO}", *(f"--package {p}" for p in DAMON_PACKAGES)])


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


def parse_duration_us(text: str, option: str, low_us: int, high_us: int) -> int:
    """``5ms`` -> 5000, checked against [low_us, high_us]."""
    try:
        us = time_ns(text) / 1e3
    except ValueError:
        us = -1.0
    if not low_us <= us <= high_us or us != int(us):
        raise CosimError(f"{option} {text}: want a time from {low_us}us to {high_us // 1000}ms "
                         "in whole microseconds, such as 5ms or 500us")
    return int(us)


def parse_damon_intervals(text: str) -> tuple[int, int, int]:
    """``--damon-intervals SAMPLE,AGGR,UPDATE`` (e.g. 5ms,100ms,1s) -> microseconds."""
    parts = text.split(",")
    if len(parts) != 3:
        raise CosimError(f"--damon-intervals {text}: want SAMPLE,AGGREGATION,UPDATE, "
                         "e.g. 5ms,100ms,1s")
    sample, aggr, update = (parse_duration_us(p.strip(), "--damon-intervals", 100, 60_000_000)
                            for p in parts)
    if not sample <= aggr <= update:
        raise CosimError(f"--damon-intervals {text}: want SAMPLE <= AGGREGATION <= UPDATE")
    return sample, aggr, update


def damon_schemes(damon_us: tuple[int, int, int]) -> dict[str, str]:
    """``damo args damon`` options of HMSDK's two schemes, scaled to the aggregation interval.

    HMSDK (aggregation 2 s): demote regions not accessed (0%) for 30 s with
    a quota of 1 s of DAMON's time per 20 s, only pages found not young;
    promote regions accessed at >= 5% at any age with 2 s per 20 s, only
    young pages; both in any region size. Here 30 s is 15 aggregations,
    1 s and 2 s are 1/2 and 1 aggregation, 20 s is 10.
    """
    sample, aggr, update = damon_us
    common = (f"--monitoring_intervals {sample}us {aggr}us {update}us "
              "--monitoring_nr_regions_range 100 10000 --damos_sz_region 4096 max")
    return {
        "cold": f"--numa_node 0 {common} --damos_action migrate_cold 1 "
                f"--damos_filter young matching --damos_access_rate 0% 0% "
                f"--damos_age {15 * aggr}us max --damos_quotas {aggr // 2}us 50G {10 * aggr}us "
                "0 0 1%",
        "hot": f"--numa_node 1 {common} --damos_action migrate_hot 0 "
               f"--damos_filter young nomatching --damos_access_rate 5% 100% "
               f"--damos_age 0 max --damos_quotas {aggr}us 50G {10 * aggr}us 0 0 1%",
    }


#: where the damon policy's guest script puts the file ``damo start`` reads
DAMON_FILE = "/root/hmsdk.json"
_KDAMONDS = "/sys/kernel/mm/damon/admin/kdamonds"
#: DAMON's own per-scheme statistics, printed after the workload
DAMON_STATS = ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")


def _damon_start(exp: Experiment) -> list[str]:
    """Make HMSDK's configuration with damo, in the guest, and start it."""
    schemes = damon_schemes(exp.damon_us)
    merge = ("import json, sys; print(json.dumps({'kdamonds': [json.load(open(f))['kdamonds'][0] "
             "for f in sys.argv[1:]]}, indent=4))")
    return ["mount -t tracefs none /sys/kernel/tracing 2>/dev/null",
            f"damo args damon {schemes['cold']} > /tmp/demote.json || exit 3",
            f"damo args damon {schemes['hot']} > /tmp/promote.json || exit 3",
            f"python3 -c {shlex.quote(merge)} /tmp/demote.json /tmp/promote.json > {DAMON_FILE}",
            f"damo start {DAMON_FILE} || {{ echo 'cosim tiering: damo start failed'; exit 3; }}"]


def _damon_report() -> list[str]:
    """``damo show`` as the lab notes run it, then DAMON's scheme statistics as RESULT lines."""
    stats = " ".join(f"{k}=$(cat $s/stats/{k})" for k in DAMON_STATS)
    # through a pipe: damo pages through less, which on the console (a terminal) would wait
    # for keys; with its output not a terminal, less prints the text
    return ["damo show | cat",
            f"for k in {_KDAMONDS}/[0-9]*; do echo update_schemes_stats > $k/state; "
            f"for s in $k/contexts/0/schemes/[0-9]*; do "
            f"echo \"RESULT damon kdamond=${{k##*/}} action=$(cat $s/action) {stats}\"; "
            "done; done",
            "damo stop"]


def _vmstat(phase: str) -> str:
    pattern = "|".join(VMSTAT)
    return (f"echo \"RESULT vmstat phase={phase}$(awk '/^({pattern}) /"
            "{printf \" %s=%s\", $1, $2}' /proc/vmstat)\"")


def guest_script(exp: Experiment, policy: str, workload_cmd: list[str]) -> str:
    """The shell command the guest's init runs for one policy's run."""
    # the timeline's samples from the start, so that they count from where simulated time does
    lines = [f"/workloads/vmlog -i {exp.interval_us} & vmlog=$!" if exp.vmlog else "vmlog=",
             "mount -t debugfs none /sys/kernel/debug 2>/dev/null"]
    if policy == "numa-balancing":
        lines += [f"echo 2 > {_NUMA_BALANCING}", f"echo true > {_DEMOTION}"]
        lines += [f"echo {v} > {KNOBS[k]}" for k, v in sorted(exp.knobs.items())]
    else:
        lines += [f"echo 0 > {_NUMA_BALANCING}",
                  f"echo {'false' if policy == 'none' else 'true'} > {_DEMOTION}"]
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
    if policy == "damon":
        lines += _damon_start(exp)
    lines += [_vmstat("before"), shlex.join(cmd), "rc=$?", _vmstat("after"),
              "[ -z \"$vmlog\" ] || kill $vmlog"]
    if policy == "damon":
        lines += _damon_report()
    return "\n".join(lines + ["exit $rc"])


def _pairs(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d{1,19})", line)}


def _demoted(c: dict[str, int]) -> int:
    """Pages moved to the slow tier: the kernel's demotions and DAMON's migrate_cold."""
    return (c.get("pgdemote_kswapd", 0) + c.get("pgdemote_direct", 0)
            + c.get("pgdemote_khugepaged", 0) + c.get("damon_cold_bytes", 0) // 4096)


def migration_timeline(results: list[str]) -> dict:
    """Pages promoted and demoted per ``vmlog`` interval of the guest's clock.

    Every migration counts in ``pgmigrate_success``; those that are not
    demotions (kswapd's, or DAMON's migrate_cold) went to node 0, whoever
    moved them: NUMA balancing, DAMON's migrate_hot or the CHMU promoter's
    ``move_pages``. (Node 1 has no CPUs, so no other migration targets it.)
    """
    samples = [_pairs(r) for r in results if r.startswith("RESULT vmlog ")]
    t, promoted, demoted = [], [], []
    for a, b in zip(samples, samples[1:]):
        dem = _demoted(b) - _demoted(a)
        t.append(b["t_us"] / 1e3)
        demoted.append(dem)
        promoted.append(max(0, b["pgmigrate_success"] - a["pgmigrate_success"] - dem))
    return {"t_ms": t, "promoted": promoted, "demoted": demoted}


def row(policy: str, summary: dict, workload: str, work_key: str) -> dict:
    """One policy's results: the workload's figure, the model's traffic, the kernel's counters."""
    results = summary["guest_results"]
    mine = [r for r in results if r.startswith(f"RESULT {workload} ")]
    vm = {}
    for phase in ("before", "after"):
        line = next((r for r in results if r.startswith(f"RESULT vmstat phase={phase}")), "")
        vm[phase] = {k: v for k, v in _pairs(line).items() if k in VMSTAT}
    delta = {k: vm["after"].get(k, 0) - vm["before"].get(k, 0) for k in VMSTAT}
    timing = summary["timing"]
    mem = timing["memory"]
    reads = mem["dram"]["reads"] + mem["cxl"]["reads"]
    promoter = [r for r in results if r.startswith("RESULT chmu ")]
    damon = [dict(_pairs(r), action=r.split("action=")[1].split()[0])
             for r in results if r.startswith("RESULT damon ")]
    damon_pages = {a: sum(d["sz_applied"] for d in damon if d["action"] == a) // 4096
                   for a in ("migrate_hot", "migrate_cold")}
    loop_ns = result_value(mine, "loop_ns")
    work = result_value(mine, work_key)
    out = {
        "policy": policy,
        "loop_ns": loop_ns,
        work_key: work,
        "per_second": work / loop_ns * 1e9 if work and loop_ns else None,
        "cycles": summary["cycles"],
        "seconds": timing["seconds"],
        "insns": summary["session_insns"],
        "dram_reads": mem["dram"]["reads"], "dram_writes": mem["dram"]["writes"],
        "cxl_reads": mem["cxl"]["reads"], "cxl_writes": mem["cxl"]["writes"],
        "cxl_share": mem["cxl"]["reads"] / reads if reads else 0.0,
        "migrated_bytes": delta["pgmigrate_success"] * 4096,
        # pages moved to node 0: the kernel's promotions, DAMON's migrate_hot, the CHMU
        # promoter's moves
        "promoted": delta["pgpromote_success"] + damon_pages["migrate_hot"]
        + (result_value(promoter, "moved") or 0),
        "demoted": _demoted(delta) + damon_pages["migrate_cold"],
        "vmstat": delta,
        "vmstat_before": vm["before"], "vmstat_after": vm["after"],
        "results": mine,
        "exit_code": summary.get("workload_exit_code"),
        "migrations": migration_timeline(results),
    }
    if damon:
        out["damon"] = damon
    chmu = timing.get("chmu")
    if chmu is not None:
        out["chmu"] = {"epochs": chmu["epochs"], "accuracy": chmu["accuracy"]}
    if "timeline" in timing:
        out["timeline"] = timing["timeline"]
    return out


def table(rows: list[dict], work_key: str) -> str:
    """The side-by-side comparison ``cosim tiering`` prints."""
    head = (f"{'policy':<15} {work_key:>10} {'loop ms':>9} {'per s':>12} {'vs none':>8} "
            f"{'cycles':>14} {'CXL share':>9} {'promoted':>9} {'demoted':>9} {'migrated':>10} "
            + " ".join(f"{k:>{max(len(k), 8)}}" for k in VMSTAT))
    out = [head]
    base = next((r["per_second"] for r in rows if r["policy"] == "none"), None)
    for r in rows:
        per = r["per_second"]
        ratio = f"{per / base:.2f}x" if per and base else "-"
        out.append(f"{r['policy']:<15} {r[work_key] if r[work_key] is not None else '-':>10} "
                   f"{(r['loop_ns'] or 0) / 1e6:>9.2f} {f'{per:,.0f}' if per else '-':>12} "
                   f"{ratio:>8} {r['cycles']:>14,} {r['cxl_share']:>9.3f} {r['promoted']:>9,} "
                   f"{r['demoted']:>9,} {r['migrated_bytes'] >> 20:>8} M "
                   + " ".join(f"{r['vmstat'][k]:>{max(len(k), 8)},}" for k in VMSTAT))
    return "\n".join(out)


def damon_table(rows: list[dict]) -> str:
    """DAMON's own statistics per scheme, for the policies that ran it."""
    out = []
    for r in rows:
        for d in r.get("damon", []):
            out.append(f"{r['policy']:<15} kdamond {d['kdamond']} {d['action']:<13} "
                       + " ".join(f"{k}={d[k]:,}" for k in DAMON_STATS))
    return "\n".join(out)
