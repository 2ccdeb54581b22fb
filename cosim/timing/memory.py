"""DRAM and CXL memory: address-to-tier mapping, controllers, tier stats.

A controller is a bandwidth server per direction plus a fixed latency. Its
occupancy is kept in time bins (``BIN_TICKS`` wide, in a ring of
``NBINS``): a request at time t takes the first bin at or after t that is
not yet full, so queueing appears once demand exceeds bandwidth. Bins,
rather than a single "free at" time, matter because cores run a quantum
each in simulated-time order: a request may arrive a little earlier in
simulated time than one already booked, and must not queue behind it.

Requests are booked here, in compiled code, rather than as one SimPy event
each: SimPy costs a few microseconds per event, which would cap the model
far below the detailed-mode speed target (see DESIGN notes in README).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from . import chmu

TICKS_PER_CYCLE = 1000          # time unit of all kernels: 1/1000 cycle
BIN_TICKS = 64 * TICKS_PER_CYCLE
NBINS = 1 << 15                 # ring of bins: 2M cycles of look-back
PAGE_SHIFT = 12
HIST_BINS = 8192                # read latency histogram, 1-cycle bins

TIER_DRAM, TIER_CXL = 0, 1
TIER_NAMES = ("dram", "cxl")
DEFAULT_INTERLEAVE = 2          # P_DEFAULT_TIER value: pages alternate by weight

# columns of ctrl
K_TIER, K_READ_LAT, K_WRITE_LAT, K_READ_COST, K_WRITE_COST, K_SHARED = range(6)
NKCOLS = 6

# columns of tier_stats
TS_READS, TS_WRITES, TS_READ_BYTES, TS_WRITE_BYTES, TS_READ_LAT, TS_QUEUE, TS_QUEUED = range(7)
NTSTATS = 7

# params
P_DEFAULT_TIER, P_W_DRAM, P_W_CXL, P_IGRAN, P_LINE_BYTES = range(5)
P_NCTRL_DRAM, P_NCTRL_CXL, P_CGRAN_DRAM, P_CGRAN_CXL = range(5, 9)
NMPARAMS = 9


class MemArrays(NamedTuple):
    """Memory-side state and counters."""

    params: np.ndarray      # int64[NMPARAMS]
    ranges: np.ndarray      # int64[n, 3]: start, end, tier (explicit mapping)
    ram: np.ndarray         # int64[n, 3]: start, end, first page index (page stats)
    ctrl: np.ndarray        # int64[nctrl, NKCOLS]; DRAM controllers first
    bin_id: np.ndarray      # int64[nctrl, 2, NBINS]: absolute bin number held
    bin_used: np.ndarray    # int64[nctrl, 2, NBINS]: busy ticks booked
    ctrl_stats: np.ndarray  # int64[nctrl, 2]: requests, queued ticks
    tier_stats: np.ndarray  # int64[2, NTSTATS]
    hist: np.ndarray        # int64[2, HIST_BINS]: read latency, cycles
    pages: np.ndarray       # int64[npages, 2]: reads, writes (64-byte lines)
    chmu_p: np.ndarray      # int64: the CHMUs' parameters and layout (chmu.layout)
    chmu: np.ndarray        # int64: every CHMU counter (the arena; chmu.views names them)


@njit(_nrt=False, cache=True)
def tier_of(Mm: MemArrays, addr: int) -> int:
    """Memory tier of a physical address."""
    for r in range(Mm.ranges.shape[0]):
        if Mm.ranges[r, 0] <= addr < Mm.ranges[r, 1]:
            return Mm.ranges[r, 2]
    p = Mm.params
    if p[P_DEFAULT_TIER] == DEFAULT_INTERLEAVE:
        slot = (addr // p[P_IGRAN]) % (p[P_W_DRAM] + p[P_W_CXL])
        return TIER_DRAM if slot < p[P_W_DRAM] else TIER_CXL
    return p[P_DEFAULT_TIER]


@njit(_nrt=False, cache=True)
def controller_of(Mm: MemArrays, addr: int, tier: int) -> int:
    """Controller serving ``addr``: interleaved across the tier's controllers."""
    p = Mm.params
    if tier == TIER_DRAM:
        return (addr // p[P_CGRAN_DRAM]) % p[P_NCTRL_DRAM]
    return p[P_NCTRL_DRAM] + (addr // p[P_CGRAN_CXL]) % p[P_NCTRL_CXL]


@njit(_nrt=False, cache=True)
def _bin(Mm: MemArrays, k: int, direction: int, b: int) -> int:
    """Ring slot of absolute bin ``b``, recycled if it held an older bin."""
    slot = b % NBINS
    if Mm.bin_id[k, direction, slot] != b:
        Mm.bin_id[k, direction, slot] = b
        Mm.bin_used[k, direction, slot] = 0
    return slot


@njit(_nrt=False, cache=True)
def book(Mm: MemArrays, k: int, direction: int, t: int, cost: int) -> int:
    """Book ``cost`` busy ticks on controller ``k`` from time ``t``; returns the start.

    The transfer starts in the first bin at or after ``t`` with room and
    spills into the following bins, so throughput never exceeds bandwidth.
    """
    b = t // BIN_TICKS
    slot = _bin(Mm, k, direction, b)
    while Mm.bin_used[k, direction, slot] >= BIN_TICKS:
        b += 1
        slot = _bin(Mm, k, direction, b)
    used = Mm.bin_used[k, direction, slot]
    start = b * BIN_TICKS + used
    if start < t:
        start = t
    left = cost
    while True:
        room = BIN_TICKS - Mm.bin_used[k, direction, slot]
        if left <= room:
            Mm.bin_used[k, direction, slot] += left
            return start
        Mm.bin_used[k, direction, slot] = BIN_TICKS
        left -= room
        b += 1
        slot = _bin(Mm, k, direction, b)


@njit(_nrt=False, cache=True)
def in_ram(Mm: MemArrays, addr: int) -> bool:
    """``addr`` is memory the model serves (a RAM row), even if QEMU maps it as MMIO.

    QEMU's CXL type-3 device serves its fixed memory window through MMIO
    callbacks; to the guest's CPUs it is ordinary cacheable memory.
    """
    for r in range(Mm.ram.shape[0]):
        if Mm.ram[r, 0] <= addr < Mm.ram[r, 1]:
            return True
    return False


@njit(_nrt=False, cache=True)
def count_page(Mm: MemArrays, addr: int, write: bool) -> None:
    for r in range(Mm.ram.shape[0]):
        if Mm.ram[r, 0] <= addr < Mm.ram[r, 1]:
            page = Mm.ram[r, 2] + ((addr - Mm.ram[r, 0]) >> PAGE_SHIFT)
            Mm.pages[page, 1 if write else 0] += 1
            return


@njit(_nrt=False, cache=True)
def access(Mm: MemArrays, addr: int, write: bool, t: int) -> tuple:
    """One line read or write reaching memory at time ``t``.

    Returns (latency ticks including queueing, tier). Writes are posted: the
    caller does not wait for them, but they take bandwidth.
    """
    tier = tier_of(Mm, addr)
    k = controller_of(Mm, addr, tier)
    shared = Mm.ctrl[k, K_SHARED] != 0
    if write:
        start = book(Mm, k, 0 if shared else 1, t, Mm.ctrl[k, K_WRITE_COST])
        lat = (start - t) + Mm.ctrl[k, K_WRITE_LAT]
        cost = Mm.ctrl[k, K_WRITE_COST]
    else:
        start = book(Mm, k, 0, t, Mm.ctrl[k, K_READ_COST])
        lat = (start - t) + Mm.ctrl[k, K_READ_LAT]
        cost = Mm.ctrl[k, K_READ_COST]
    queued = start - t
    lat += cost             # serialisation of the line on the channel / link
    Mm.ctrl_stats[k, 0] += 1
    Mm.ctrl_stats[k, 1] += queued
    ts = Mm.tier_stats
    line_bytes = Mm.params[P_LINE_BYTES]
    if write:
        ts[tier, TS_WRITES] += 1
        ts[tier, TS_WRITE_BYTES] += line_bytes
    else:
        ts[tier, TS_READS] += 1
        ts[tier, TS_READ_BYTES] += line_bytes
        ts[tier, TS_READ_LAT] += lat
        cycles = lat // TICKS_PER_CYCLE
        Mm.hist[tier, cycles if cycles < HIST_BINS else HIST_BINS - 1] += 1
    ts[tier, TS_QUEUE] += queued
    if queued > 0:
        ts[tier, TS_QUEUED] += 1
    count_page(Mm, addr, write)
    if tier == TIER_CXL and Mm.chmu_p[chmu.CP_ON] != 0:
        chmu.observe(Mm.chmu_p, Mm.chmu, addr, write, t)
    return lat, tier
