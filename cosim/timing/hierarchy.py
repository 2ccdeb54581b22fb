"""The cache hierarchy of one access: private L1I/L1D/L2 with MESI, shared LLC.

Cache ids (rows of ``CacheArrays.geom``) for n cores: L1I of core c is c,
L1D is n+c, L2 is 2n+c, LLC slice s is 3n+s. The private hierarchy of a
core is inclusive (its L2 holds everything its L1s hold) and the L2 holds
the core's MESI state, mirrored in the L1s; other cores are snooped at
their L2 on an L2 miss (a snoop filter would give the same answers).
Dirty lines are written back to the LLC; LLC victims are written to memory,
and in an inclusive LLC they are first invalidated in every private cache.

Each core's L2 has a stream prefetcher (the L2 "streamer" of Intel's
optimization manual): L1D misses to ascending lines train a table of
streams, and a trained stream keeps the L2 filled up to ``distance``
lines ahead of the demand, within the 4 KiB page. A prefetched line is
in the L2 at once but its data arrive only when memory delivers them
(``CacheArrays.ready``), so a demand that catches up with the prefetch
waits for the rest and memory bandwidth, not the reorder buffer, limits
streaming. Prefetches skip lines another core holds.

A line changes owner one transfer at a time: a small table keeps, per
line, when its last cache-to-cache transfer or upgrade completes, and the
next one starts no earlier. Cores run a quantum each in simulated-time
order, so without it a line bouncing between cores (false sharing) would
be in every cache at once, each paying one unqueued transfer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from . import memory
from .caches import (CS_ACCESSES, CS_DOWNGRADES, CS_INVALIDATIONS, CS_MISSES, CS_PREFETCHES,
                     CS_WRITEBACKS, G_LATENCY, E, I, M, S, CacheArrays, find, holds, install,
                     set_state, state, touch, u, victim, victim_guess, warm_set)
from .memory import MemArrays

# where an access was served (also the CPI-stack category of its stall)
LVL_L1, LVL_L2, LVL_LLC, LVL_COHERENCE, LVL_DRAM, LVL_CXL = range(6)

# hierarchy params
H_NCORES, H_SLICE_BITS, H_INCLUSIVE, H_UPGRADE, H_TRANSFER, H_LINE_SHIFT = range(6)
H_PF_DISTANCE, H_PF_STREAMS = 6, 7
NHPARAMS = 8

# rows of a core's stream table (a row per field, so a search reads one row)
PF_LAST, PF_NEXT, PF_STAMP = range(3)
PF_WINDOW = 4           # a miss this many lines above a stream's last one continues it
PAGE_SHIFT = 12         # prefetches stay within the trigger's 4 KiB page
OWN_SLOTS = 4096        # lines tracked for ownership transfers (direct mapped)


class Hier(NamedTuple):
    """Caches, memory and the fixed parameters of the hierarchy."""

    C: CacheArrays
    Mm: MemArrays
    hp: np.ndarray      # int64[NHPARAMS]
    pf: np.ndarray      # int64[ncores, 3, streams]: the L2 prefetchers' stream tables
    pf_clock: np.ndarray  # int64[1]: stamps the streams' uses (least recent is replaced)
    own: np.ndarray     # int64[OWN_SLOTS, 2]: line, time its last ownership change ends


def allocate_streams(ncores: int, streams: int) -> np.ndarray:
    """Empty stream tables (a last line no miss can be near)."""
    pf = np.zeros((ncores, 3, max(streams, 1)), dtype=np.int64)
    pf[:, PF_LAST, :] = -(1 << 62)
    return pf


def allocate_ownership() -> np.ndarray:
    own = np.zeros((OWN_SLOTS, 2), dtype=np.int64)
    own[:, 0] = -1
    return own


@njit(_nrt=False, cache=True, inline="always")
def _llc(H: Hier, line: int) -> tuple:
    """(cache id, set key) of the LLC slice that holds ``line``."""
    n = H.hp[H_NCORES]
    bits = H.hp[H_SLICE_BITS]
    return 3 * n + (line & ((1 << bits) - 1)), line >> bits


@njit(_nrt=False, cache=True, inline="always")
def _drop_private(H: Hier, core: int, line: int, j2: int) -> int:
    """Remove ``line`` from a core's L1I, L1D and L2 slot ``j2``; returns its old state.

    Every caller has just found the line's L2 slot, so only the L1s are searched.
    """
    C = H.C
    n = H.hp[H_NCORES]
    old = state(C, j2)
    set_state(C, j2, I)
    for cid in (core, n + core):
        j = find(C, cid, line, line)
        if j >= 0:
            if state(C, j) > old:
                old = state(C, j)
            set_state(C, j, I)
    return old


@njit(_nrt=False, cache=True, inline="always")
def _set_private_state(H: Hier, core: int, line: int, s: int) -> None:
    C = H.C
    n = H.hp[H_NCORES]
    for cid in (core, n + core, 2 * n + core):
        j = find(C, cid, line, line)
        if j >= 0:
            set_state(C, j, s)


@njit(_nrt=False, cache=True, inline="always")
def _ownership(H: Hier, line: int, t: int, cost: int) -> int:
    """Latency of an ownership change of ``line`` at ``t`` taking ``cost`` ticks.

    It waits for the line's previous change to finish (see module docstring).
    """
    k = line & (OWN_SLOTS - 1)
    start = t
    if H.own[k, 0] == line and H.own[k, 1] > t:
        start = H.own[k, 1]
    H.own[k, 0] = line
    H.own[k, 1] = start + cost
    return start + cost - t


@njit(_nrt=False, cache=True, inline="always")
def _memory_write(H: Hier, line: int, t: int) -> None:
    memory.access(H.Mm, line << H.hp[H_LINE_SHIFT], True, t)


@njit(_nrt=False, cache=True, inline="always")
def _llc_fill(H: Hier, line: int, s: int, t: int) -> None:
    """Allocate ``line`` in its LLC slice, evicting (and writing back) a victim."""
    C = H.C
    cid, key = _llc(H, line)
    j = victim(C, cid, key)
    if state(C, j) != I:
        old = C.key[j] >> 2
        dirty = state(C, j) == M
        if H.hp[H_INCLUSIVE]:
            n = H.hp[H_NCORES]
            for o in range(n):
                jo = find(C, 2 * n + o, old, old)
                if jo >= 0:
                    if _drop_private(H, o, old, jo) == M:
                        dirty = True
                    C.stats[2 * n + o, CS_INVALIDATIONS] += 1
        if dirty:
            C.stats[cid, CS_WRITEBACKS] += 1
            _memory_write(H, old, t)
    install(C, cid, key, j, line, s, t, LVL_LLC)


@njit(_nrt=False, cache=True, inline="always")
def _llc_write(H: Hier, line: int, t: int) -> None:
    """A private cache writes a dirty line back to the LLC."""
    C = H.C
    cid, key = _llc(H, line)
    j = find(C, cid, key, line)
    if j >= 0:
        set_state(C, j, M)
        touch(C, cid, key, j)
    else:
        _llc_fill(H, line, M, t)


@njit(_nrt=False, cache=True, inline="always")
def _fill_l1(H: Hier, cid: int, line: int, s: int, ready: int, src: int) -> None:
    """Fill an L1; its victim needs no write-back (the inclusive L2 mirrors it)."""
    C = H.C
    j = victim(C, cid, line)
    install(C, cid, line, j, line, s, ready, src)


@njit(_nrt=False, cache=True, inline="always")
def _fill_l2(H: Hier, core: int, line: int, s: int, t: int, ready: int, src: int) -> None:
    """Fill the core's L2; its victim leaves the core's L1s too (inclusion)."""
    C = H.C
    n = H.hp[H_NCORES]
    cid = 2 * n + core
    j = victim(C, cid, line)
    if state(C, j) != I:
        old = C.key[j] >> 2
        if _drop_private(H, core, old, j) == M:
            C.stats[cid, CS_WRITEBACKS] += 1
            _llc_write(H, old, t)
    install(C, cid, line, j, line, s, ready, src)


@njit(_nrt=False, cache=True, inline="always")
def _invalidate_others(H: Hier, core: int, line: int, t: int) -> bool:
    """Take ``line`` away from every other core; True if one had it dirty."""
    C = H.C
    n = H.hp[H_NCORES]
    dirty = False
    for o in range(n):
        if o == core:
            continue
        jo = find(C, 2 * n + o, line, line)
        if jo >= 0:
            if _drop_private(H, o, line, jo) == M:
                dirty = True
                C.stats[2 * n + o, CS_WRITEBACKS] += 1
                _llc_write(H, line, t)
            C.stats[2 * n + o, CS_INVALIDATIONS] += 1
    return dirty


@njit(_nrt=False, cache=True, inline="always")
def l1_hit(H: Hier, core: int, line: int, write: bool, ifetch: bool, hint: int) -> int:
    """Fast path: a read hit, or a write hit on an owned line, in the L1.

    ``hint`` is a slot of that L1 to try before searching the set (the one
    the core's previous access of the kind hit, or -1): consecutive
    accesses often touch one line, and a slot holding the line is the
    only one that can, so the answer is the same.

    Returns the slot (its ``ready`` time says whether the data are still in
    flight); else ``access`` must serve it and is handed the miss code:
    -1 when the line is absent, ``-2 - slot`` for a write to a line held
    shared (so ``access`` need not search the L1 again).
    """
    C = H.C
    n = H.hp[H_NCORES]
    cid = core if ifetch else n + core
    if hint >= 0 and holds(C, hint, line):
        j = hint
    else:
        j = find(C, cid, line, line)
        if j < 0:
            return -1
    if write:
        if state(C, j) < E:
            return -2 - j
        if state(C, j) == E:
            # a silent upgrade: this slot, and the L1I and L2 copies that mirror it
            set_state(C, j, M)
            for mirror in (core, 2 * n + core):
                jm = find(C, mirror, line, line)
                if jm >= 0:
                    set_state(C, jm, M)
    C.stats[u(cid), CS_ACCESSES] += 1
    touch(C, cid, line, j)
    return j


@njit(_nrt=False, cache=True, inline="always")
def _prefetch_line(H: Hier, core: int, line: int, t: int) -> None:
    """Bring ``line`` into the core's L2 (and the LLC) unless a cache already has it."""
    C = H.C
    hp = H.hp
    n = hp[H_NCORES]
    for o in range(n):
        if find(C, 2 * n + o, line, line) >= 0:
            return
    llc, key = _llc(H, line)
    llc_lat = C.geom[llc, G_LATENCY]
    j3 = find(C, llc, key, line)
    if j3 >= 0:
        touch(C, llc, key, j3)
        lat, level = llc_lat, LVL_LLC
    else:
        mlat, tier = memory.access(H.Mm, line << hp[H_LINE_SHIFT], False, t + llc_lat)
        lat = llc_lat + mlat
        level = LVL_DRAM if tier == memory.TIER_DRAM else LVL_CXL
        _llc_fill(H, line, S, t + lat)
    C.stats[2 * n + core, CS_PREFETCHES] += 1
    _fill_l2(H, core, line, E, t, t + lat, level)


@njit(_nrt=False, cache=True, inline="always")
def _prefetch(H: Hier, core: int, line: int, t: int) -> None:
    """Train the core's stream table on an L1D miss and run trained streams ahead."""
    last, nxt, stamp = H.pf[core, PF_LAST], H.pf[core, PF_NEXT], H.pf[core, PF_STAMP]
    streams = H.hp[H_PF_STREAMS]
    H.pf_clock[0] += 1
    # one pass without a branch per stream (so the host can do it in vector
    # steps): the first stream this miss continues, and the oldest use
    s = streams
    oldest = stamp[0]
    for k in range(streams):
        d = line - last[u(k)]
        s = min(s, k if 0 < d <= PF_WINDOW else streams)
        oldest = min(oldest, stamp[u(k)])
    if s == streams:
        # a new stream replaces the least recently used one (the first of
        # the oldest); it prefetches from its second miss on
        s = 0
        while stamp[u(s)] != oldest:
            s += 1
        last[u(s)] = line
        nxt[u(s)] = line + 1
        stamp[u(s)] = H.pf_clock[0]
        return
    last[u(s)] = line
    stamp[u(s)] = H.pf_clock[0]
    page_lines = PAGE_SHIFT - H.hp[H_LINE_SHIFT]
    end = line + H.hp[H_PF_DISTANCE]
    page_end = ((line >> page_lines) + 1) << page_lines
    if end >= page_end:
        end = page_end - 1
    p = nxt[u(s)]
    if p <= line:
        p = line + 1
    while p <= end:
        _prefetch_line(H, core, p, t)
        p += 1
    if p > nxt[u(s)]:
        nxt[u(s)] = p


@njit(_nrt=False, cache=True, inline="always")
def _serve_miss(H: Hier, core: int, line: int, write: bool, ifetch: bool, t: int) -> tuple:
    """An L1 miss: the L2, the other cores, the LLC, memory; (latency ticks, level)."""
    C = H.C
    hp = H.hp
    n = hp[H_NCORES]
    l1 = core if ifetch else n + core
    l2 = 2 * n + core
    C.stats[l1, CS_MISSES] += 1
    C.stats[l2, CS_ACCESSES] += 1
    j2 = find(C, l2, line, line)
    if j2 >= 0:
        touch(C, l2, line, j2)
        lat, level = C.geom[l2, G_LATENCY], LVL_L2
        if C.ready[j2] - t > lat:
            # still in flight (a prefetch the demand caught up with)
            lat, level = C.ready[j2] - t, C.src[j2]
        if write and state(C, j2) == S:
            _invalidate_others(H, core, line, t)
            set_state(C, j2, M)
            lat = _ownership(H, line, t + lat, hp[H_UPGRADE]) + lat
            _fill_l1(H, l1, line, M, t + lat, LVL_COHERENCE)
            return lat, LVL_COHERENCE
        if write:
            set_state(C, j2, M)
        _fill_l1(H, l1, line, state(C, j2), t + lat, level)
        return lat, level
    C.stats[l2, CS_MISSES] += 1
    # the line the L2 will evict for this one, if dirty, is written back to
    # its LLC set: have the host load that set while the miss is served (a
    # guess, as the set may change before the fill; it only warms the host)
    jv = victim_guess(C, l2, line)
    if state(C, jv) == M:
        old = C.key[u(jv)] >> 2
        llc_old, key_old = _llc(H, old)
        warm_set(C, llc_old, key_old, True)

    # snoop the other cores
    transfer = False
    shared = False
    if write:
        transfer = _invalidate_others(H, core, line, t)
    else:
        for o in range(n):
            if o == core:
                continue
            jo = find(C, 2 * n + o, line, line)
            if jo < 0:
                continue
            shared = True
            if state(C, jo) == M:
                transfer = True
                C.stats[2 * n + o, CS_WRITEBACKS] += 1
                _llc_write(H, line, t)
            if state(C, jo) >= E:
                C.stats[2 * n + o, CS_DOWNGRADES] += 1
                _set_private_state(H, o, line, S)
    s = M if write else (S if shared else E)

    llc, key = _llc(H, line)
    llc_lat = C.geom[llc, G_LATENCY]
    if transfer:
        lat, level = _ownership(H, line, t, hp[H_TRANSFER]), LVL_COHERENCE
    else:
        C.stats[llc, CS_ACCESSES] += 1
        j3 = find(C, llc, key, line)
        if j3 >= 0:
            touch(C, llc, key, j3)
            lat, level = llc_lat, LVL_LLC
        else:
            C.stats[llc, CS_MISSES] += 1
            mlat, tier = memory.access(H.Mm, line << hp[H_LINE_SHIFT], False, t + llc_lat)
            lat = llc_lat + mlat
            level = LVL_DRAM if tier == memory.TIER_DRAM else LVL_CXL
            _llc_fill(H, line, S, t + lat)
    _fill_l2(H, core, line, s, t, t + lat, level)
    _fill_l1(H, l1, line, s, t + lat, level)
    return lat, level


@njit(_nrt=False, cache=True, inline="never")
def access(H: Hier, core: int, line: int, write: bool, ifetch: bool, t: int,
           miss: int) -> tuple:
    """Serve an access that the L1 fast path did not; returns (latency ticks, level).

    ``miss`` is what ``l1_hit`` returned for it.
    """
    C = H.C
    l1 = core if ifetch else H.hp[H_NCORES] + core
    C.stats[l1, CS_ACCESSES] += 1
    if miss <= -2:
        j1 = -2 - miss
        # a write to a line held shared: upgrade, invalidating the other
        # copies, once the line's data are here
        _invalidate_others(H, core, line, t)
        _set_private_state(H, core, line, M)
        touch(C, l1, line, j1)
        wait = C.ready[j1] - t
        if wait < 0:
            wait = 0
        return wait + _ownership(H, line, t + wait, H.hp[H_UPGRADE]), LVL_COHERENCE
    # the sets a miss may search: its own L2 (and that set's ranks, for a
    # victim), the other cores' L2s (snooped), its LLC slice
    n = H.hp[H_NCORES]
    for o in range(n):
        warm_set(C, 2 * n + o, line, o == core)
    llc, key = _llc(H, line)
    warm_set(C, llc, key, True)
    lat, level = _serve_miss(H, core, line, write, ifetch, t)
    if not ifetch and H.hp[H_PF_DISTANCE] > 0:
        _prefetch(H, core, line, t)
    return lat, level
