"""Interval-style core model: cycles of one vCPU turn from its trace records.

Instructions dispatch at ``base_cpi`` each (the issue width) unless the
core stalls. A load that misses the L1 takes an MSHR (at most ``mlp``
outstanding misses per core) and completes after its latency; it stalls
dispatch only when it reaches the head of a full reorder buffer (``rob``
instructions later), so independent misses overlap. A load whose address
came from an earlier load (the plugin's dependence flag) cannot issue
before that load completes, so pointer chases serialise. Stores retire
into the store buffer (``store_buffer`` entries) and leave it in program
order, as on a TSO machine: a store's miss takes an MSHR and bandwidth,
later stores wait behind it, and dispatch stalls only when the buffer is
full. That is what makes a line bouncing between cores (false sharing)
cost time: each store has to win the line back before the next can
leave. An access that hits a line still in flight (a second miss to it,
or a prefetch not yet arrived) waits for its data. Instruction fetch
misses stall the front end for their latency.

Stall cycles are charged to the level that served the blocking access,
which gives the CPI stack. All times are ticks (``TICKS_PER_CYCLE``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from . import hierarchy, memory
from .caches import G_LATENCY, u
from .hierarchy import Hier
from .memory import TIER_CXL, TIER_DRAM, TS_READ_BYTES, TS_WRITE_BYTES

KIND_IFETCH, KIND_LOAD, KIND_STORE = 0, 1, 2   # cosim.trace
FLAG_IO = 1
FLAG_DEP_SHIFT = 2

# CPI stack categories: hierarchy levels, then these
CAT_BASE, CAT_L1D, CAT_L2, CAT_LLC, CAT_COHERENCE, CAT_DRAM, CAT_CXL, CAT_L1I, CAT_IO = range(9)
NCATS = 9
CAT_NAMES = ("base", "l1d", "l2", "llc", "coherence", "dram", "cxl", "l1i", "io")
LEVEL_CAT = np.array([CAT_L1D, CAT_L2, CAT_LLC, CAT_COHERENCE, CAT_DRAM, CAT_CXL], dtype=np.int64)

# per-core scalars
T_TIME, T_INSNS, T_HEAD, T_COUNT, T_LDHEAD, T_IDLE, T_LOADS, T_STORES, T_FETCHES = range(9)
T_IO, T_BUSY = 9, 10
T_SBHEAD, T_SBCOUNT, T_SBLAST, T_SBLAST_CAT = 11, 12, 13, 14
NSCAL = 15

# core params
C_CPI, C_ROB, C_MLP, C_IO_LAT, C_ROI_BEGIN, C_ROI_END, C_SB = range(7)
NCPARAMS = 7

LD_RING = 8     # completion times of the last loads (dependence distance <= 7)

# ROI snapshot columns: time, instructions, then DRAM and CXL bytes moved
R_TIME, R_INSNS, R_DRAM_BYTES, R_CXL_BYTES, R_SEEN = range(5)
NROI = 5


class CoreArrays(NamedTuple):
    """Per-core state of the interval model."""

    params: np.ndarray      # int64[NCPARAMS]
    scal: np.ndarray        # int64[ncores, NSCAL]
    fifo_idx: np.ndarray    # int64[ncores, rob]: instruction number of a long op
    fifo_done: np.ndarray   # int64[ncores, rob]: its completion time
    fifo_cat: np.ndarray    # int64[ncores, rob]: its CPI category
    mshr: np.ndarray        # int64[ncores, mlp]: completion time of each MSHR
    sb_done: np.ndarray     # int64[ncores, store_buffer]: when each store leaves
    sb_cat: np.ndarray      # int64[ncores, store_buffer]: its CPI category
    ld_done: np.ndarray     # int64[ncores, LD_RING]
    cpi: np.ndarray         # int64[ncores, NCATS]: ticks per category
    roi: np.ndarray         # int64[ncores, 2, NROI]: begin / end snapshots


def allocate(ncores: int, rob: int, mlp: int, store_buffer: int,
             params: np.ndarray) -> CoreArrays:
    return CoreArrays(
        params=params,
        scal=np.zeros((ncores, NSCAL), dtype=np.int64),
        fifo_idx=np.zeros((ncores, rob), dtype=np.int64),
        fifo_done=np.zeros((ncores, rob), dtype=np.int64),
        fifo_cat=np.zeros((ncores, rob), dtype=np.int64),
        mshr=np.zeros((ncores, mlp), dtype=np.int64),
        sb_done=np.zeros((ncores, store_buffer), dtype=np.int64),
        sb_cat=np.zeros((ncores, store_buffer), dtype=np.int64),
        ld_done=np.zeros((ncores, LD_RING), dtype=np.int64),
        cpi=np.zeros((ncores, NCATS), dtype=np.int64),
        roi=np.zeros((ncores, 2, NROI), dtype=np.int64),
    )


@njit(_nrt=False, cache=True, inline="always")
def _wrap(i: int, n: int) -> int:
    """``i % n`` for ``0 <= i < 2n``: ring indices, without a division per record."""
    return i - n if i >= n else i


@njit(_nrt=False, cache=True)
def _take_mshr(K: CoreArrays, c: int, t: int) -> tuple:
    """The MSHR that frees first (the first such), and when the miss can issue.

    The minimum is taken without a branch per entry, then looked up: a
    data-dependent branch per entry mispredicts.
    """
    free = K.mshr[c, 0]
    for s in range(1, K.mshr.shape[1]):
        free = min(free, K.mshr[c, s])
    slot = 0
    while K.mshr[c, slot] != free:
        slot += 1
    return slot, (free if free > t else t)


@njit(_nrt=False, cache=True, inline="always")
def _data_access(K: CoreArrays, H: Hier, c: int, line: int, write: bool, issue: int,
                 hit_lat: int, hint: int) -> tuple:
    """(completion time, CPI category, L1D slot hit or -1) of a load or store issued at ``issue``.

    An L1 hit completes after ``hit_lat`` unless its line is still in flight;
    a miss takes an MSHR and goes down the hierarchy. ``hint``: see
    ``hierarchy.l1_hit``.
    """
    C = H.C
    j = hierarchy.l1_hit(H, c, line, write, False, hint)
    if j >= 0:
        done = issue + hit_lat
        ready = C.ready[u(j)]
        if ready > done:
            return ready, LEVEL_CAT[C.src[u(j)]], j
        return done, CAT_L1D, j
    slot, issue = _take_mshr(K, c, issue)
    lat, level = hierarchy.access(H, c, line, write, False, issue, j)
    K.mshr[c, slot] = issue + lat
    return issue + lat, LEVEL_CAT[level], -1


@njit(_nrt=False, cache=True)
def _roi_mark(K: CoreArrays, H: Hier, c: int, which: int, now: int, insn: int) -> None:
    ts = H.Mm.tier_stats
    K.roi[c, which, R_TIME] = now
    K.roi[c, which, R_INSNS] = insn
    K.roi[c, which, R_DRAM_BYTES] = ts[TIER_DRAM, TS_READ_BYTES] + ts[TIER_DRAM, TS_WRITE_BYTES]
    K.roi[c, which, R_CXL_BYTES] = ts[TIER_CXL, TS_READ_BYTES] + ts[TIER_CXL, TS_WRITE_BYTES]
    K.roi[c, which, R_SEEN] += 1


@njit(_nrt=False, cache=True)
def run_turn(K: CoreArrays, H: Hier, c: int, recs: np.ndarray, executed: int) -> int:
    """Advance core ``c`` over one turn of ``executed`` instructions; returns its ticks.

    ``recs``: the turn's trace records (``cosim.trace.RECORD_DTYPE``), passed
    as they are: one argument, no per-field views to build per call. The
    core's rows of the per-core arrays are taken once and indexed unsigned
    (``caches.u``), and its event counts kept in locals until the turn ends:
    this loop runs once per record.
    """
    p = K.params
    cpi = p[C_CPI]
    rob = p[C_ROB]
    sbsize = p[C_SB]
    shift = H.hp[hierarchy.H_LINE_SHIFT]
    n = H.hp[hierarchy.H_NCORES]
    l1d_lat = H.C.geom[n + c, G_LATENCY]
    l1i_lat = H.C.geom[c, G_LATENCY]
    sc = K.scal[c]
    fifo_idx, fifo_done, fifo_cat = K.fifo_idx[c], K.fifo_done[c], K.fifo_cat[c]
    sb_done, sb_cat, ld_done, cycles = K.sb_done[c], K.sb_cat[c], K.ld_done[c], K.cpi[c]
    base = sc[T_TIME]
    ibase = sc[T_INSNS]
    head = sc[T_HEAD]
    count = sc[T_COUNT]
    ldhead = sc[T_LDHEAD]
    sbhead = sc[T_SBHEAD]
    sbcount = sc[T_SBCOUNT]
    sblast = sc[T_SBLAST]
    sblast_cat = sc[T_SBLAST_CAT]
    fetches = loads = stores = ios = 0
    stall = 0
    ihint = -1      # L1I / L1D slots the last fetch / data access hit
    dhint = -1
    for r in range(recs.shape[0]):
        rec = recs[r]
        i = np.int64(rec.idx)
        k = rec.kind
        a = np.int64(rec.addr)
        fl = rec.flags
        now = base + i * cpi + stall
        ai = ibase + i
        # the reorder buffer is full behind a long operation: wait for it
        while count > 0 and fifo_idx[u(head)] + rob <= ai:
            done = fifo_done[u(head)]
            if done > now:
                cycles[u(fifo_cat[u(head)])] += done - now
                stall += done - now
                now = done
            head = _wrap(head + 1, rob)
            count -= 1
        if fl & FLAG_IO and not memory.in_ram(H.Mm, a):
            # device register: uncached and serialising
            ios += 1
            cycles[CAT_IO] += p[C_IO_LAT]
            stall += p[C_IO_LAT]
            continue
        line = a >> shift
        if k == KIND_IFETCH:
            fetches += 1
            miss = hierarchy.l1_hit(H, c, line, False, True, ihint)
            ihint = miss
            if miss < 0:
                lat, level = hierarchy.access(H, c, line, False, True, now, miss)
                if lat > l1i_lat:
                    cycles[CAT_L1I] += lat - l1i_lat
                    stall += lat - l1i_lat
        elif k == KIND_LOAD:
            loads += 1
            issue = now
            dep = (fl >> FLAG_DEP_SHIFT) & 7
            if dep:
                producer = ld_done[u((ldhead - (dep - 1)) & (LD_RING - 1))]
                if producer > issue:
                    issue = producer
            done, cat, dhint = _data_access(K, H, c, line, False, issue, l1d_lat, dhint)
            ldhead = (ldhead + 1) & (LD_RING - 1)
            ld_done[u(ldhead)] = done
            if done > now + l1d_lat:
                # entries older than rob instructions were retired above, but one
                # instruction can load many times (``rep movs`` copies a page as
                # one instruction, each load its own micro-op): a full buffer
                # stalls dispatch until its oldest entry completes, as for stores
                if count == rob:
                    oldest = fifo_done[u(head)]
                    if oldest > now:
                        cycles[u(fifo_cat[u(head)])] += oldest - now
                        stall += oldest - now
                        now = oldest
                    head = _wrap(head + 1, rob)
                    count -= 1
                tail = u(_wrap(head + count, rob))
                fifo_idx[tail] = ai
                fifo_done[tail] = done
                fifo_cat[tail] = cat
                count += 1
        else:
            stores += 1
            if p[C_ROI_BEGIN] == a:
                _roi_mark(K, H, c, 0, now, ai)
            elif p[C_ROI_END] == a:
                _roi_mark(K, H, c, 1, now, ai)
            # stores that have left the buffer free their entries; a full
            # buffer stalls dispatch until its oldest store leaves
            while sbcount > 0 and sb_done[u(sbhead)] <= now:
                sbhead = _wrap(sbhead + 1, sbsize)
                sbcount -= 1
            if sbcount == sbsize:
                done = sb_done[u(sbhead)]
                cycles[u(sb_cat[u(sbhead)])] += done - now
                stall += done - now
                now = done
                sbhead = _wrap(sbhead + 1, sbsize)
                sbcount -= 1
            # a store hit is done when it has the line: 0 cycles after issue
            done, cat, dhint = _data_access(K, H, c, line, True, now, 0, dhint)
            if done < sblast:
                # in program order: it leaves after the store ahead of it
                done = sblast
                cat = sblast_cat
            if done > now:
                slot = u(_wrap(sbhead + sbcount, sbsize))
                sb_done[slot] = done
                sb_cat[slot] = cat
                sbcount += 1
                sblast = done
                sblast_cat = cat
    ticks = executed * cpi + stall
    cycles[CAT_BASE] += executed * cpi
    sc[T_TIME] = base + ticks
    sc[T_INSNS] = ibase + executed
    sc[T_BUSY] += ticks
    sc[T_HEAD] = head
    sc[T_COUNT] = count
    sc[T_LDHEAD] = ldhead
    sc[T_SBHEAD] = sbhead
    sc[T_SBCOUNT] = sbcount
    sc[T_SBLAST] = sblast
    sc[T_SBLAST_CAT] = sblast_cat
    sc[T_FETCHES] += fetches
    sc[T_LOADS] += loads
    sc[T_STORES] += stores
    sc[T_IO] += ios
    return ticks


@njit(_nrt=False, cache=True)
def run_turns(K: CoreArrays, H: Hier, c: int, recs: np.ndarray, bounds: np.ndarray,
              executed: np.ndarray, ticks: np.ndarray) -> None:
    """``run_turn`` over consecutive turns of core ``c`` in one call.

    Turn ``t`` owns ``recs[bounds[t]:bounds[t + 1]]`` and ran ``executed[t]``
    instructions; its ticks go to ``ticks[t]``. One call per batch saves
    the cost of passing the model's arrays to compiled code once per turn.
    """
    for t in range(executed.shape[0]):
        ticks[t] = run_turn(K, H, c, recs[bounds[t]:bounds[t + 1]], executed[t])


@njit(_nrt=False, cache=True)
def run_round(K: CoreArrays, H: Hier, vcpus: np.ndarray, recs: np.ndarray,
              bounds: np.ndarray, executed: np.ndarray, starts: np.ndarray,
              ticks: np.ndarray, head: np.ndarray, next_of: np.ndarray) -> None:
    """Several vCPUs' turns, fed in simulated-time order, in one call.

    The turns of a round (``bounds``/``executed`` as in ``run_turns``, core
    ``vcpus[t]``) are given in the order QEMU ran them; each core's turns
    stay in that order, and the next turn fed is always that of the core
    with the smallest local time (ties: the lower core), as the exact
    order would step them. Turn ``t`` starts at ``starts[t]`` and takes
    ``ticks[t]``. ``head`` (per core) and ``next_of`` (per turn) are
    scratch space: the kernel cannot allocate.
    """
    ncores = head.shape[0]
    nt = vcpus.shape[0]
    for c in range(ncores):
        head[c] = -1
    for t in range(nt - 1, -1, -1):
        c = vcpus[t]
        next_of[t] = head[c]
        head[c] = t
    sc = K.scal
    for _ in range(nt):
        # np.int64, not a literal -1: numba would also compile run_turn (and
        # the whole hierarchy inlined into it) for a core of type Literal[-1]
        best = np.int64(-1)
        for c in range(ncores):
            if head[c] >= 0 and (best < 0 or sc[c, T_TIME] < sc[best, T_TIME]):
                best = c
        t = head[best]
        head[best] = next_of[t]
        starts[t] = sc[best, T_TIME]
        ticks[t] = run_turn(K, H, best, recs[bounds[t]:bounds[t + 1]], executed[t])
