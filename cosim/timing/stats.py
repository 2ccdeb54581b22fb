"""The stats document of a timing run, and its human-readable table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import caches, core, memory
from .memory import TICKS_PER_CYCLE as T
from .state import Model

if TYPE_CHECKING:
    from .engine import TimingRun

HOT_PAGES = 10


def _cache_rows(m: Model, insns: np.ndarray) -> list[dict]:
    n = m.ncores
    names = [f"l1i.{c}" for c in range(n)] + [f"l1d.{c}" for c in range(n)] + \
            [f"l2.{c}" for c in range(n)] + [f"llc.{s}" for s in range(m.cfg.llc.slices)]
    total = int(insns.sum())
    rows = []
    for cid, name in enumerate(names):
        st = m.H.C.stats[cid]
        level, _, unit = name.partition(".")
        k = int(insns[int(unit)]) if level != "llc" else total
        row = {"cache": name, "level": level}
        row.update({key: int(st[i]) for i, key in enumerate(caches.CSTAT_NAMES)})
        row["miss_rate"] = round(row["misses"] / row["accesses"], 6) if row["accesses"] else 0.0
        row["mpki"] = round(1000 * row["misses"] / k, 4) if k else 0.0
        rows.append(row)
    return rows


def _tier(m: Model, t: int, cycles: int) -> dict:
    ts = m.H.Mm.tier_stats[t]
    hist = m.H.Mm.hist[t]
    ghz = m.cfg.core.frequency_ghz
    reads, writes = int(ts[memory.TS_READS]), int(ts[memory.TS_WRITES])
    total_bytes = int(ts[memory.TS_READ_BYTES] + ts[memory.TS_WRITE_BYTES])
    p99 = 0
    if reads:
        p99 = int(np.searchsorted(np.cumsum(hist), 0.99 * reads))
    seconds = cycles / (ghz * 1e9) if cycles else 0.0
    return {
        "reads": reads, "writes": writes,
        "read_bytes": int(ts[memory.TS_READ_BYTES]), "write_bytes": int(ts[memory.TS_WRITE_BYTES]),
        "bytes": total_bytes,
        "mean_latency_ns": round(ts[memory.TS_READ_LAT] / T / reads / ghz, 3) if reads else 0.0,
        "p99_latency_ns": round(p99 / ghz, 3),
        "mean_queue_ns": round(ts[memory.TS_QUEUE] / T / (reads + writes) / ghz, 3)
        if reads + writes else 0.0,
        "queued_fraction": round(int(ts[memory.TS_QUEUED]) / (reads + writes), 6)
        if reads + writes else 0.0,
        "bandwidth_gbps": round(total_bytes / seconds / 1e9, 4) if seconds else 0.0,
        # read latency distribution: [cycles, reads] for every non-empty 1-cycle bin
        "latency_histogram": [[int(c), int(hist[c])] for c in np.flatnonzero(hist)],
    }


def _hot_pages(m: Model) -> dict[str, list[dict]]:
    """Hottest 4 KiB pages per tier, by line transfers to and from memory."""
    pages = m.H.Mm.pages
    line = m.cfg.llc.line_bytes
    out: dict[str, list[dict]] = {name: [] for name in memory.TIER_NAMES}
    for start, end, first in m.H.Mm.ram:
        npages = (end - start) >> memory.PAGE_SHIFT
        counts = pages[first:first + npages]
        total = counts.sum(axis=1)
        # stable order: hottest first, then lowest address
        order = np.lexsort((np.arange(npages), -total))
        for p in order:
            if total[p] == 0:
                break
            addr = int(start + (int(p) << memory.PAGE_SHIFT))
            tier = memory.TIER_NAMES[memory.tier_of(m.H.Mm, addr)]
            if len(out[tier]) < HOT_PAGES:
                r, w = int(counts[p, 0]), int(counts[p, 1])
                out[tier].append({"page": f"{addr:#x}", "reads": r, "writes": w,
                                  "bytes": (r + w) * line})
            if all(len(v) >= HOT_PAGES for v in out.values()):
                break
    return out


def _roi(m: Model) -> dict | None:
    """The region between the first ROI begin and the last ROI end over all cores."""
    roi = m.K.roi
    seen = roi[:, 0, core.R_SEEN] > 0
    ended = roi[:, 1, core.R_SEEN] > 0
    if not (seen.any() and ended.any()):
        return None
    b = int(np.argmin(np.where(seen, roi[:, 0, core.R_TIME], np.iinfo(np.int64).max)))
    e = int(np.argmax(np.where(ended, roi[:, 1, core.R_TIME], -1)))
    ticks = int(roi[e, 1, core.R_TIME] - roi[b, 0, core.R_TIME])
    cycles = ticks / T
    seconds = cycles / (m.cfg.core.frequency_ghz * 1e9)
    out: dict = {"cycles": round(cycles, 3), "cores": []}
    for tier, col in (("dram", core.R_DRAM_BYTES), ("cxl", core.R_CXL_BYTES)):
        moved = int(roi[e, 1, col] - roi[b, 0, col])
        out[f"{tier}_bytes"] = moved
        out[f"{tier}_bandwidth_gbps"] = round(moved / seconds / 1e9, 4) if seconds > 0 else 0.0
    for c in range(m.ncores):
        if seen[c] and ended[c]:
            out["cores"].append({
                "core": c,
                "cycles": round((roi[c, 1, core.R_TIME] - roi[c, 0, core.R_TIME]) / T, 3),
                "instructions": int(roi[c, 1, core.R_INSNS] - roi[c, 0, core.R_INSNS]),
            })
    return out


def document(m: Model, cycles: int, preset: str | None, config_path: str | None,
             time_base: int = 0, parked: list[bool] | None = None) -> dict:
    """Every counter of the model, as the JSON document of ``cosim run --timing``.

    ``time_base``: ticks at the end of a warm-up, which per-core cycles leave out.
    ``parked``: cores asleep at the end (halted, waiting for an interrupt);
    they are idle up to the latest core's time, which their own local time
    (where they fell asleep) does not show yet.
    """
    sc = m.K.scal
    insns = sc[:, core.T_INSNS]
    end = int(sc[:, core.T_TIME].max())
    cores = []
    for c in range(m.ncores):
        n = int(insns[c])
        busy = int(sc[c, core.T_BUSY]) // T
        stack = {name: round(int(m.K.cpi[c, i]) / T / n, 6) if n else 0.0
                 for i, name in enumerate(core.CAT_NAMES)}
        local, idle = int(sc[c, core.T_TIME]), int(sc[c, core.T_IDLE])
        if parked is not None and parked[c]:
            idle += end - local
            local = end
        cores.append({
            "core": c,
            "cycles": (local - time_base) // T,
            "busy_cycles": busy,
            "idle_cycles": idle // T,
            "instructions": n,
            "ipc": round(n / busy, 6) if busy else 0.0,
            "cpi_stack": stack,
            "loads": int(sc[c, core.T_LOADS]), "stores": int(sc[c, core.T_STORES]),
            "fetch_lines": int(sc[c, core.T_FETCHES]), "io_accesses": int(sc[c, core.T_IO]),
        })
    return {
        "cycles": cycles,
        "seconds": cycles / (m.cfg.core.frequency_ghz * 1e9),
        "config": {"preset": preset, "file": config_path, "digest": m.cfg.digest(),
                   "load_latencies": m.cfg.load_latencies()},
        "cores": cores,
        "caches": _cache_rows(m, insns),
        "memory": {name: _tier(m, t, cycles) for t, name in enumerate(memory.TIER_NAMES)},
        "hot_pages": _hot_pages(m),
        "roi": _roi(m),
    }


def clock_report(engine: "TimingRun", time_base: int = 0) -> dict:
    """The guest's clock against simulated time at the end of a run.

    The guest clock is QEMU's virtual clock (what the guest's TSC, timers
    and ``clock_gettime`` read); ``sim_*`` is the model's time of the
    latest core. They agree within one turn of the running vCPU; where
    turns were batched the clock ran at the predicted rate, and
    ``max_batch_drift_ns`` is its largest miss at a batch end.
    """
    clock = engine.clock
    sim_end = clock.ns(int(engine.model.K.scal[:, core.T_TIME].max()))
    start = clock.ns(time_base)
    return {
        "guest_clock_ns": engine.last_vclock,
        "guest_clock_start_ns": start,
        "guest_elapsed_s": (engine.last_vclock - start) / 1e9,
        "sim_end_ns": sim_end,
        "sim_elapsed_s": (sim_end - start) / 1e9,
        "lag_at_end_ns": sim_end - engine.last_vclock,
        "max_lead_ns": engine.max_lead_ns,
        "max_lag_ns": engine.max_lag_ns,
        "max_batch_drift_ns": engine.max_batch_drift_ns,
        "stalled": engine.stalled,
    }


def table(doc: dict) -> str:
    """The human summary printed after a timing run."""
    lines = [f"simulated: {doc['cycles']:,} cycles ({doc['seconds'] * 1e3:.3f} ms), "
             f"preset {doc['config']['preset'] or '(default)'}"]
    if "clock" in doc:
        c = doc["clock"]
        lines.append(f"guest clock: {c['guest_clock_ns'] / 1e9:.6f} s at the end, "
                     f"{c['guest_elapsed_s'] * 1e3:.3f} ms in this run "
                     f"(simulated {c['sim_elapsed_s'] * 1e3:.3f} ms; "
                     f"{c['lag_at_end_ns']:,} ns behind at the end)")
    cats = list(doc["cores"][0]["cpi_stack"]) if doc["cores"] else []
    lines.append(f"{'core':>4} {'cycles':>14} {'insns':>12} {'IPC':>6}  CPI stack: "
                 + " ".join(f"{c:>6}" for c in cats))
    for c in doc["cores"]:
        lines.append(f"{c['core']:>4} {c['cycles']:>14,} {c['instructions']:>12,} {c['ipc']:>6.3f}"
                     "             " + " ".join(f"{c['cpi_stack'][k]:>6.3f}" for k in cats))
    lines.append(f"{'cache':>8} {'accesses':>12} {'misses':>10} {'MPKI':>8} {'wb':>8} "
                 f"{'inval':>8} {'downgr':>8} {'prefetch':>9}")
    for r in doc["caches"]:
        if r["accesses"]:
            lines.append(f"{r['cache']:>8} {r['accesses']:>12,} {r['misses']:>10,} "
                         f"{r['mpki']:>8.2f} {r['writebacks']:>8,} {r['invalidations']:>8,} "
                         f"{r['downgrades']:>8,} {r['prefetches']:>9,}")
    for name, t in doc["memory"].items():
        if t["reads"] or t["writes"]:
            lines.append(f"{name}: {t['reads']:,} reads, {t['writes']:,} writes, "
                         f"{t['bytes'] / 2**20:.1f} MiB, mean {t['mean_latency_ns']} ns, "
                         f"p99 {t['p99_latency_ns']} ns, queue {t['mean_queue_ns']} ns, "
                         f"{t['bandwidth_gbps']} GB/s")
    for p in doc["hot_pages"]["cxl"][:5]:
        lines.append(f"hot CXL page {p['page']}: {p['reads']:,} reads, {p['writes']:,} writes")
    if "chmu" in doc:
        c = doc["chmu"]
        lines.append(f"CHMU: {c['config']['tracker']}, unit {c['config']['unit_bytes']} B, "
                     f"epoch {c['config']['epoch_us']:g} us, {c['epochs']} epochs closed")
        for name, a in c["accuracy"].items():
            if a["epochs"]:
                lines.append(f"  {name:>14}: precision {a['precision']:.3f}, recall "
                             f"{a['recall']:.3f}, coverage {a['coverage']:.3f} "
                             f"(mean of {a['epochs']} epochs)")
    if doc["roi"]:
        r = doc["roi"]
        lines.append(f"ROI: {r['cycles']:,.0f} cycles, DRAM {r['dram_bandwidth_gbps']} GB/s, "
                     f"CXL {r['cxl_bandwidth_gbps']} GB/s")
    return "\n".join(lines)
