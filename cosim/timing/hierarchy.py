"""The cache hierarchy of one access: private L1I/L1D/L2 with MESI, shared LLC.

Cache ids (rows of ``CacheArrays.geom``) for n cores: L1I of core c is c,
L1D is n+c, L2 is 2n+c, LLC slice s is 3n+s. The private hierarchy of a
core is inclusive (its L2 holds everything its L1s hold) and the L2 holds
the core's MESI state, mirrored in the L1s; other cores are snooped at
their L2 on an L2 miss (a snoop filter would give the same answers).
Dirty lines are written back to the LLC; LLC victims are written to memory,
and in an inclusive LLC they are first invalidated in every private cache.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from . import memory
from .caches import (CS_ACCESSES, CS_DOWNGRADES, CS_INVALIDATIONS, CS_MISSES, CS_WRITEBACKS,
                     G_LATENCY, E, I, M, S, CacheArrays, find, install, touch, victim)
from .memory import MemArrays

# where an access was served (also the CPI-stack category of its stall)
LVL_L1, LVL_L2, LVL_LLC, LVL_COHERENCE, LVL_DRAM, LVL_CXL = range(6)

# hierarchy params
H_NCORES, H_SLICE_BITS, H_INCLUSIVE, H_UPGRADE, H_TRANSFER, H_LINE_SHIFT = range(6)
NHPARAMS = 6


class Hier(NamedTuple):
    """Caches, memory and the fixed parameters of the hierarchy."""

    C: CacheArrays
    Mm: MemArrays
    hp: np.ndarray      # int64[NHPARAMS]


@njit(_nrt=False, cache=True, inline="always")
def _llc(H: Hier, line: int) -> tuple:
    """(cache id, set key) of the LLC slice that holds ``line``."""
    n = H.hp[H_NCORES]
    bits = H.hp[H_SLICE_BITS]
    return 3 * n + (line & ((1 << bits) - 1)), line >> bits


@njit(_nrt=False, cache=True, inline="always")
def _drop_private(H: Hier, core: int, line: int) -> int:
    """Remove ``line`` from a core's L1I, L1D and L2; returns its old L2 state."""
    C = H.C
    n = H.hp[H_NCORES]
    old = I
    for cid in (core, n + core, 2 * n + core):
        j = find(C, cid, line, line)
        if j >= 0:
            if C.state[j] > old:
                old = C.state[j]
            C.state[j] = I
    return old


@njit(_nrt=False, cache=True, inline="always")
def _set_private_state(H: Hier, core: int, line: int, state: int) -> None:
    C = H.C
    n = H.hp[H_NCORES]
    for cid in (core, n + core, 2 * n + core):
        j = find(C, cid, line, line)
        if j >= 0:
            C.state[j] = state


@njit(_nrt=False, cache=True, inline="always")
def _memory_write(H: Hier, line: int, t: int) -> None:
    memory.access(H.Mm, line << H.hp[H_LINE_SHIFT], True, t)


@njit(_nrt=False, cache=True, inline="always")
def _llc_fill(H: Hier, line: int, state: int, t: int) -> None:
    """Allocate ``line`` in its LLC slice, evicting (and writing back) a victim."""
    C = H.C
    cid, key = _llc(H, line)
    j = victim(C, cid, key)
    if C.state[j] != I:
        old = C.tags[j]
        dirty = C.state[j] == M
        if H.hp[H_INCLUSIVE]:
            n = H.hp[H_NCORES]
            for o in range(n):
                if find(C, 2 * n + o, old, old) >= 0:
                    if _drop_private(H, o, old) == M:
                        dirty = True
                    C.stats[2 * n + o, CS_INVALIDATIONS] += 1
        if dirty:
            C.stats[cid, CS_WRITEBACKS] += 1
            _memory_write(H, old, t)
    install(C, j, line, state)


@njit(_nrt=False, cache=True, inline="always")
def _llc_write(H: Hier, line: int, t: int) -> None:
    """A private cache writes a dirty line back to the LLC."""
    C = H.C
    cid, key = _llc(H, line)
    j = find(C, cid, key, line)
    if j >= 0:
        C.state[j] = M
        touch(C, cid, j)
    else:
        _llc_fill(H, line, M, t)


@njit(_nrt=False, cache=True, inline="always")
def _fill_l1(H: Hier, cid: int, line: int, state: int) -> None:
    """Fill an L1; its victim needs no write-back (the inclusive L2 mirrors it)."""
    C = H.C
    j = victim(C, cid, line)
    install(C, j, line, state)


@njit(_nrt=False, cache=True, inline="always")
def _fill_l2(H: Hier, core: int, line: int, state: int, t: int) -> None:
    """Fill the core's L2; its victim leaves the core's L1s too (inclusion)."""
    C = H.C
    n = H.hp[H_NCORES]
    cid = 2 * n + core
    j = victim(C, cid, line)
    if C.state[j] != I:
        old = C.tags[j]
        if _drop_private(H, core, old) == M:
            C.stats[cid, CS_WRITEBACKS] += 1
            _llc_write(H, old, t)
    install(C, j, line, state)


@njit(_nrt=False, cache=True, inline="always")
def _invalidate_others(H: Hier, core: int, line: int, t: int) -> bool:
    """Take ``line`` away from every other core; True if one had it dirty."""
    C = H.C
    n = H.hp[H_NCORES]
    dirty = False
    for o in range(n):
        if o != core and find(C, 2 * n + o, line, line) >= 0:
            if _drop_private(H, o, line) == M:
                dirty = True
                C.stats[2 * n + o, CS_WRITEBACKS] += 1
                _llc_write(H, line, t)
            C.stats[2 * n + o, CS_INVALIDATIONS] += 1
    return dirty


@njit(_nrt=False, cache=True, inline="always")
def l1_hit(H: Hier, core: int, line: int, write: bool, ifetch: bool) -> bool:
    """Fast path: a read hit, or a write hit on an owned line, in the L1."""
    C = H.C
    n = H.hp[H_NCORES]
    cid = core if ifetch else n + core
    j = find(C, cid, line, line)
    if j < 0:
        return False
    if write:
        if C.state[j] < E:
            return False
        if C.state[j] == E:
            _set_private_state(H, core, line, M)
    C.stats[cid, CS_ACCESSES] += 1
    touch(C, cid, j)
    return True


@njit(_nrt=False, cache=True, inline="never")
def access(H: Hier, core: int, line: int, write: bool, ifetch: bool, t: int) -> tuple:
    """Serve an access that the L1 fast path did not; returns (latency ticks, level)."""
    C = H.C
    hp = H.hp
    n = hp[H_NCORES]
    l1 = core if ifetch else n + core
    l2 = 2 * n + core
    C.stats[l1, CS_ACCESSES] += 1
    j1 = find(C, l1, line, line)
    if j1 >= 0:
        # a write to a line held shared: upgrade, invalidating the other copies
        _invalidate_others(H, core, line, t)
        _set_private_state(H, core, line, M)
        touch(C, l1, j1)
        return hp[H_UPGRADE], LVL_COHERENCE
    C.stats[l1, CS_MISSES] += 1
    C.stats[l2, CS_ACCESSES] += 1
    j2 = find(C, l2, line, line)
    if j2 >= 0:
        touch(C, l2, j2)
        if write and C.state[j2] == S:
            _invalidate_others(H, core, line, t)
            C.state[j2] = M
            _fill_l1(H, l1, line, M)
            return hp[H_UPGRADE], LVL_COHERENCE
        if write:
            C.state[j2] = M
        _fill_l1(H, l1, line, C.state[j2])
        return C.geom[l2, G_LATENCY], LVL_L2
    C.stats[l2, CS_MISSES] += 1

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
            if C.state[jo] == M:
                transfer = True
                C.stats[2 * n + o, CS_WRITEBACKS] += 1
                _llc_write(H, line, t)
            if C.state[jo] >= E:
                C.stats[2 * n + o, CS_DOWNGRADES] += 1
                _set_private_state(H, o, line, S)
    state = M if write else (S if shared else E)

    llc, key = _llc(H, line)
    llc_lat = C.geom[llc, G_LATENCY]
    if transfer:
        lat, level = hp[H_TRANSFER], LVL_COHERENCE
    else:
        C.stats[llc, CS_ACCESSES] += 1
        j3 = find(C, llc, key, line)
        if j3 >= 0:
            touch(C, llc, j3)
            lat, level = llc_lat, LVL_LLC
        else:
            C.stats[llc, CS_MISSES] += 1
            mlat, tier = memory.access(H.Mm, line << hp[H_LINE_SHIFT], False, t + llc_lat)
            lat = llc_lat + mlat
            level = LVL_DRAM if tier == memory.TIER_DRAM else LVL_CXL
            _llc_fill(H, line, S, t + lat)
    _fill_l2(H, core, line, state, t + lat)
    _fill_l1(H, l1, line, state)
    return lat, level
