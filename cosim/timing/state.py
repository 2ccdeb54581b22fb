"""Build the model's arrays from a configuration and the guest's RAM layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import caches, chmu_monitor, core, hierarchy, memory
from .chmu import ChmuArrays
from .chmu_monitor import Monitor
from .config import Config

TICKS = memory.TICKS_PER_CYCLE


@dataclass
class Model:
    """Everything the kernels update, plus what the reports need to read it."""

    cfg: Config
    ncores: int
    H: hierarchy.Hier
    K: core.CoreArrays
    ram: list[tuple[int, int]]          # (start, size) of each RAM range
    chmu: Monitor | None = None         # the CXL devices' hotness monitoring units, if on


def _ticks(cycles: float) -> int:
    return int(round(cycles * TICKS))


def build(cfg: Config, ncores: int, ram: list[tuple[int, int]],
          roi: tuple[int, int] = (-1, -1), seed: int = 1) -> Model:
    """Arrays for ``ncores`` cores; ``roi`` = addresses of the guest's ROI markers."""
    line = cfg.llc.line_bytes
    shapes: list[tuple[int, int, int, int]] = []
    for name in ("l1i", "l1d", "l2"):
        c = getattr(cfg, name)
        sets = c.size_kib * 1024 // (c.ways * line)
        shapes += [(sets, c.ways, caches.POLICIES[c.replacement], _ticks(c.latency))] * ncores
    llc = cfg.llc
    sets = llc.size_kib * 1024 // llc.slices // (llc.ways * line)
    shapes += [(sets, llc.ways, caches.POLICIES[llc.replacement], _ticks(llc.latency))] * llc.slices
    C = caches.allocate(shapes, seed)

    hp = np.zeros(hierarchy.NHPARAMS, dtype=np.int64)
    hp[hierarchy.H_NCORES] = ncores
    hp[hierarchy.H_SLICE_BITS] = llc.slices.bit_length() - 1
    hp[hierarchy.H_INCLUSIVE] = int(llc.inclusive)
    hp[hierarchy.H_UPGRADE] = _ticks(cfg.coherence.upgrade_latency)
    hp[hierarchy.H_TRANSFER] = _ticks(cfg.coherence.transfer_latency)
    hp[hierarchy.H_LINE_SHIFT] = line.bit_length() - 1
    hp[hierarchy.H_PF_DISTANCE] = cfg.prefetch.distance
    hp[hierarchy.H_PF_STREAMS] = cfg.prefetch.streams

    chmu_arrays, chmu_ranges = chmu_monitor.allocate(cfg, ram)
    Mm = _memory(cfg, ram, chmu_arrays)
    cp = np.zeros(core.NCPARAMS, dtype=np.int64)
    cp[core.C_CPI] = _ticks(cfg.core.base_cpi)
    cp[core.C_ROB] = cfg.core.rob
    cp[core.C_MLP] = cfg.core.mlp
    cp[core.C_IO_LAT] = _ticks(cfg.core.io_latency)
    cp[core.C_ROI_BEGIN], cp[core.C_ROI_END] = roi
    cp[core.C_SB] = cfg.core.store_buffer
    K = core.allocate(ncores, cfg.core.rob, cfg.core.mlp, cfg.core.store_buffer, cp)
    pf = hierarchy.allocate_streams(ncores, cfg.prefetch.streams)
    monitor = Monitor.create(cfg, chmu_arrays, chmu_ranges) if cfg.chmu.enabled else None
    return Model(cfg, ncores, hierarchy.Hier(C, Mm, hp, pf, np.zeros(1, dtype=np.int64),
                                             hierarchy.allocate_ownership()), K, ram, monitor)


#: Per-core scalars that count events (reset after a warm-up); the rest is state.
_COUNTER_SCALARS = (core.T_IDLE, core.T_LOADS, core.T_STORES, core.T_FETCHES,
                    core.T_IO, core.T_BUSY)


def reset_counters(m: Model) -> None:
    """Zero every statistic but keep the state (cache contents, queues, local times).

    A warm-up ends with this, so the measured part starts with warm caches
    and counts only itself.
    """
    for a in (m.H.C.stats, m.H.Mm.ctrl_stats, m.H.Mm.tier_stats, m.H.Mm.hist, m.H.Mm.pages,
              m.K.cpi, m.K.roi):
        a[...] = 0
    for col in _COUNTER_SCALARS:
        m.K.scal[:, col] = 0
    # instruction numbers in the reorder buffer are relative to T_INSNS
    m.K.fifo_idx[...] -= m.K.scal[:, core.T_INSNS, None]
    m.K.scal[:, core.T_INSNS] = 0


def _memory(cfg: Config, ram: list[tuple[int, int]], chmu: ChmuArrays) -> memory.MemArrays:
    line = cfg.llc.line_bytes
    ctrl = []
    # DRAM: one shared (half-duplex) bus per channel; the idle load-to-use
    # latency is dram.latency_ns, of which the LLC lookup and the line
    # transfer are charged separately
    rd = cfg.line_transfer_cycles(cfg.dram.bandwidth_gbps)
    wr = cfg.line_transfer_cycles(cfg.dram.write_bandwidth_gbps)
    lat = cfg.ns_to_cycles(cfg.dram.latency_ns) - cfg.llc.latency - rd
    for _ in range(cfg.dram.channels):
        ctrl.append((memory.TIER_DRAM, _ticks(lat), _ticks(lat), _ticks(rd), _ticks(wr), 1))
    # CXL: the link is full duplex, but the device media behind it (one DDR
    # channel on measured type-3 ASICs) is shared by reads and writes, each
    # also limited by the link
    rd = cfg.line_transfer_cycles(cfg.cxl_read_gbps)
    wr = cfg.line_transfer_cycles(cfg.cxl_write_gbps)
    lat = cfg.ns_to_cycles(cfg.cxl_latency_ns) - cfg.llc.latency - rd
    for _ in range(cfg.cxl.devices):
        ctrl.append((memory.TIER_CXL, _ticks(lat), _ticks(lat), _ticks(rd), _ticks(wr), 1))
    nctrl = len(ctrl)

    mp = np.zeros(memory.NMPARAMS, dtype=np.int64)
    mp[memory.P_DEFAULT_TIER] = {"dram": memory.TIER_DRAM, "cxl": memory.TIER_CXL,
                                 "interleave": memory.DEFAULT_INTERLEAVE}[cfg.memory.default_tier]
    mp[memory.P_W_DRAM], mp[memory.P_W_CXL] = cfg.memory.interleave_weights
    mp[memory.P_IGRAN] = cfg.memory.interleave_bytes
    mp[memory.P_LINE_BYTES] = line
    mp[memory.P_NCTRL_DRAM] = cfg.dram.channels
    mp[memory.P_NCTRL_CXL] = cfg.cxl.devices
    mp[memory.P_CGRAN_DRAM] = cfg.dram.interleave_bytes
    mp[memory.P_CGRAN_CXL] = cfg.cxl.interleave_bytes

    ranges = np.array([(s, s + z, memory.TIER_DRAM if t == "dram" else memory.TIER_CXL)
                       for s, z, t in cfg.memory.ranges], dtype=np.int64).reshape(-1, 3)
    rows, first = [], 0
    for start, size in ram:
        rows.append((start, start + size, first))
        first += (size + (1 << memory.PAGE_SHIFT) - 1) >> memory.PAGE_SHIFT
    return memory.MemArrays(
        params=mp,
        ranges=ranges,
        ram=np.array(rows, dtype=np.int64).reshape(-1, 3),
        ctrl=np.array(ctrl, dtype=np.int64),
        bin_id=np.full((nctrl, 2, memory.NBINS), -1, dtype=np.int64),
        bin_used=np.zeros((nctrl, 2, memory.NBINS), dtype=np.int64),
        ctrl_stats=np.zeros((nctrl, 2), dtype=np.int64),
        tier_stats=np.zeros((2, memory.NTSTATS), dtype=np.int64),
        hist=np.zeros((2, memory.HIST_BINS), dtype=np.int64),
        pages=np.zeros((max(first, 1), 2), dtype=np.int64),
        chmu_p=chmu.p,
        chmu=chmu.arena,
    )
