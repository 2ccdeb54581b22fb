"""The CXL Hotness Monitoring Unit's counters: what each tracker sees, in compiled code.

A CHMU (CXL 3.2, 8.2.8.x "CXL Hotness Monitoring Unit") sits in a CXL
memory device and counts the requests that reach the device: LLC misses
and writebacks, never cache hits. ``memory.access`` calls ``observe`` for
every line read or written on the CXL tier when the unit is on, so the
counters see exactly the device's traffic, in the order the model serves
it, which is a function of the run's inputs only.

Per instance (one per CXL memory range: the CPU-less CXL node, a
cxl-type3 window), and per epoch:

- ``oracle``: an exact counter per unit (the reference the others are
  judged against; it sees every access the filters let through, without
  down-sampling or saturation);
- ``space-saving``: k counters (Metwally et al., 2005): a unit not held
  takes over the smallest counter and inherits its count;
- ``count-min``: a depth x width sketch (Cormode and Muthukrishnan, 2005)
  and a table of the ``hot_list`` units with the largest estimates;
- ``sample``: every N-th access (or the first after each period of
  simulated time) with its type, as a sampling host daemon gets them.

Counting per access costs a hash probe and a heap step at most; hot lists
are drawn at epoch ends (``chmu_monitor``), outside the kernels.

Top-k tables (``TopK``) hold units in slots: a min-heap of slots by
count finds the smallest, and an open-addressed hash table (linear
probing, deletion by backward shift) finds a unit's slot.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# params (from the configuration)
(CP_ON, CP_UNIT_SHIFT, CP_ACCESS, CP_DOWNSAMPLE, CP_CNT_MAX, CP_TRACKERS, CP_CM_DEPTH,
 CP_SAMPLE_EVERY, CP_SAMPLE_PERIOD) = range(9)
NCPARAMS = 9

# tracker bits of CP_TRACKERS (the oracle always counts)
TR_SPACE_SAVING, TR_COUNT_MIN, TR_SAMPLE = 1, 2, 4

# access-type bits of CP_ACCESS
ACC_READ, ACC_WRITE = 1, 2

# columns of inst: the range an instance counts (its device's, narrowed by the range
# filter) and the index of its first unit in the oracle's counters
I_LO, I_HI, I_FIRST = range(3)
NICOLS = 3

# state scalars
S_DOWN, S_SAMPLE_LEFT, S_NEXT_SAMPLE_T, S_NSAMPLES, S_DROPPED, S_NTOUCHED = range(6)
NSTATE = 6

# columns of seen (per instance): accesses the oracle and the trackers counted (since the
# counters last restarted), and this epoch's accesses and reads (whatever the mode)
SEEN_ORACLE, SEEN_TRACKED, SEEN_EPOCH, SEEN_EPOCH_READS = range(4)
NSEEN = 4

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_ROW = np.uint64(0x632BE59BD9B4E019)


class TopK(NamedTuple):
    """Units in slots, per instance; a min-heap of slots by count; a hash table unit -> slot."""

    unit: np.ndarray    # int64[ninst, k]: the unit a slot holds (-1: free)
    cnt: np.ndarray     # int64[ninst, k]: its count (an estimate for space-saving/count-min)
    err: np.ndarray     # int64[ninst, k]: space-saving: the count it inherited (overestimate)
    heap: np.ndarray    # int64[ninst, k]: slots by heap position
    pos: np.ndarray     # int64[ninst, k]: heap position by slot
    table: np.ndarray   # int64[ninst, 2^b >= 2k]: slot + 1 of the unit hashed there (0: empty)
    size: np.ndarray    # int64[ninst]: slots in use


class ChmuArrays(NamedTuple):
    """Every counter of the CHMU instances (tiny placeholders when the unit is off)."""

    p: np.ndarray        # int64[NCPARAMS]
    inst: np.ndarray     # int64[ninst, NICOLS]
    s: np.ndarray        # int64[NSTATE]
    seen: np.ndarray     # int64[ninst, NSEEN]
    oracle: np.ndarray   # int64[units]: accesses per unit this epoch
    touched: np.ndarray  # int64[units]: the units with a nonzero oracle count (S_NTOUCHED)
    ss: TopK             # space-saving counters
    cm: np.ndarray       # int64[ninst, depth, width]: count-min sketch
    cmk: TopK            # count-min's hottest units
    samples: np.ndarray  # int64[cap]: sampled unit << 1 | write (S_NSAMPLES this epoch)
    sample_t: np.ndarray  # int64[cap]: when (ticks)


def allocate_topk(ninst: int, k: int) -> TopK:
    size = 1
    while size < 2 * k:
        size *= 2
    return TopK(unit=np.full((ninst, k), -1, dtype=np.int64),
                cnt=np.zeros((ninst, k), dtype=np.int64),
                err=np.zeros((ninst, k), dtype=np.int64),
                heap=np.zeros((ninst, k), dtype=np.int64),
                pos=np.zeros((ninst, k), dtype=np.int64),
                table=np.zeros((ninst, size), dtype=np.int64),
                size=np.zeros(ninst, dtype=np.int64))


def clear_topk(T: TopK) -> None:
    """Empty every instance's table (an epoch starts)."""
    T.unit[...] = -1
    T.cnt[...] = 0
    T.err[...] = 0
    T.table[...] = 0
    T.size[...] = 0


@njit(_nrt=False, cache=True, inline="always")
def _hash(unit: int, mask: int) -> int:
    # unsigned arithmetic for the product; int64 again before mixing with signed values
    return np.int64((np.uint64(unit) * _GOLD) >> np.uint64(32)) & mask


@njit(_nrt=False, cache=True)
def _find(T: TopK, i: int, unit: int) -> int:
    """The slot holding ``unit`` in instance ``i``, or -1."""
    mask = T.table.shape[1] - 1
    h = _hash(unit, mask)
    while True:
        e = T.table[i, h]
        if e == 0:
            return -1
        if T.unit[i, e - 1] == unit:
            return e - 1
        h = (h + 1) & mask


@njit(_nrt=False, cache=True)
def _insert(T: TopK, i: int, unit: int, slot: int) -> None:
    mask = T.table.shape[1] - 1
    h = _hash(unit, mask)
    while T.table[i, h] != 0:
        h = (h + 1) & mask
    T.table[i, h] = slot + 1


@njit(_nrt=False, cache=True)
def _remove(T: TopK, i: int, unit: int) -> None:
    """Delete ``unit``'s entry, shifting later entries of its probe run back."""
    mask = T.table.shape[1] - 1
    h = _hash(unit, mask)
    while T.unit[i, T.table[i, h] - 1] != unit:
        h = (h + 1) & mask
    j = h
    while True:
        j = (j + 1) & mask
        e = T.table[i, j]
        if e == 0:
            break
        home = _hash(T.unit[i, e - 1], mask)
        # move e back into the hole at h unless its home lies cyclically in (h, j]
        if (j > h and (home <= h or home > j)) or (j < h and home <= h and home > j):
            T.table[i, h] = e
            h = j
    T.table[i, h] = 0


@njit(_nrt=False, cache=True)
def _sift_down(T: TopK, i: int, at: int) -> None:
    n = T.size[i]
    heap, pos, cnt = T.heap, T.pos, T.cnt
    s = heap[i, at]
    c = cnt[i, s]
    while True:
        child = 2 * at + 1
        if child >= n:
            break
        if child + 1 < n and cnt[i, heap[i, child + 1]] < cnt[i, heap[i, child]]:
            child += 1
        if cnt[i, heap[i, child]] >= c:
            break
        heap[i, at] = heap[i, child]
        pos[i, heap[i, at]] = at
        at = child
    heap[i, at] = s
    pos[i, s] = at


@njit(_nrt=False, cache=True)
def _push(T: TopK, i: int, unit: int, count: int) -> None:
    """Put ``unit`` in a free slot (the table has room) and sift it up the heap."""
    slot = T.size[i]
    T.size[i] = slot + 1
    T.unit[i, slot] = unit
    T.cnt[i, slot] = count
    T.err[i, slot] = 0
    _insert(T, i, unit, slot)
    heap, pos, cnt = T.heap, T.pos, T.cnt
    at = slot
    while at > 0:
        parent = (at - 1) >> 1
        if cnt[i, heap[i, parent]] <= count:
            break
        heap[i, at] = heap[i, parent]
        pos[i, heap[i, at]] = at
        at = parent
    heap[i, at] = slot
    pos[i, slot] = at


@njit(_nrt=False, cache=True)
def _replace_min(T: TopK, i: int, unit: int, count: int, err: int) -> None:
    slot = T.heap[i, 0]
    _remove(T, i, T.unit[i, slot])
    T.unit[i, slot] = unit
    T.cnt[i, slot] = count
    T.err[i, slot] = err
    _insert(T, i, unit, slot)
    _sift_down(T, i, 0)


@njit(_nrt=False, cache=True)
def space_saving(T: TopK, i: int, unit: int, cmax: int) -> None:
    """Count one access to ``unit`` with space-saving's k counters."""
    slot = _find(T, i, unit)
    if slot >= 0:
        if T.cnt[i, slot] < cmax:
            T.cnt[i, slot] += 1
            _sift_down(T, i, T.pos[i, slot])
    elif T.size[i] < T.unit.shape[1]:
        _push(T, i, unit, 1)
    else:
        low = T.cnt[i, T.heap[i, 0]]
        _replace_min(T, i, unit, min(low + 1, cmax), low)


@njit(_nrt=False, cache=True)
def count_min(C: ChmuArrays, i: int, unit: int, cmax: int) -> None:
    """Count one access in the sketch and keep the units with the largest estimates."""
    cm = C.cm
    wmask = cm.shape[2] - 1
    est = cmax
    for r in range(cm.shape[1]):
        mult = _GOLD + np.uint64(2 * r) * _ROW
        col = np.int64((np.uint64(unit) * mult) >> np.uint64(32)) & wmask
        if cm[i, r, col] < cmax:
            cm[i, r, col] += 1
        if cm[i, r, col] < est:
            est = cm[i, r, col]
    T = C.cmk
    slot = _find(T, i, unit)
    if slot >= 0:
        T.cnt[i, slot] = est
        _sift_down(T, i, T.pos[i, slot])
    elif T.size[i] < T.unit.shape[1]:
        _push(T, i, unit, est)
    elif est > T.cnt[i, T.heap[i, 0]]:
        _replace_min(T, i, unit, est, 0)


@njit(_nrt=False, cache=True)
def observe(C: ChmuArrays, addr: int, write: bool, t: int) -> None:
    """One line read or written at the CXL device at time ``t`` (ticks)."""
    p = C.p
    kind = ACC_WRITE if write else ACC_READ
    if (p[CP_ACCESS] & kind) == 0:
        return
    inst = C.inst
    i = -1
    for j in range(inst.shape[0]):
        if inst[j, I_LO] <= addr < inst[j, I_HI]:
            i = j
            break
    if i < 0:
        return
    local = (addr - inst[i, I_LO]) >> p[CP_UNIT_SHIFT]
    g = inst[i, I_FIRST] + local
    s = C.s
    if C.oracle[g] == 0:
        C.touched[s[S_NTOUCHED]] = g
        s[S_NTOUCHED] += 1
    C.oracle[g] += 1
    C.seen[i, SEEN_ORACLE] += 1
    C.seen[i, SEEN_EPOCH] += 1
    if not write:
        C.seen[i, SEEN_EPOCH_READS] += 1
    # the device's own trackers see every N-th access
    s[S_DOWN] -= 1
    if s[S_DOWN] > 0:
        return
    s[S_DOWN] = p[CP_DOWNSAMPLE]
    C.seen[i, SEEN_TRACKED] += 1
    trackers = p[CP_TRACKERS]
    cmax = p[CP_CNT_MAX]
    if trackers & TR_SPACE_SAVING:
        space_saving(C.ss, i, local, cmax)
    if trackers & TR_COUNT_MIN:
        count_min(C, i, local, cmax)
    if trackers & TR_SAMPLE:
        if p[CP_SAMPLE_PERIOD] > 0:
            take = t >= s[S_NEXT_SAMPLE_T]
            if take:
                s[S_NEXT_SAMPLE_T] = t + p[CP_SAMPLE_PERIOD]
        else:
            s[S_SAMPLE_LEFT] -= 1
            take = s[S_SAMPLE_LEFT] <= 0
            if take:
                s[S_SAMPLE_LEFT] = p[CP_SAMPLE_EVERY]
        if take:
            n = s[S_NSAMPLES]
            if n < C.samples.shape[0]:
                C.samples[n] = (g << 1) | (1 if write else 0)
                C.sample_t[n] = t
                s[S_NSAMPLES] = n + 1
            else:
                s[S_DROPPED] += 1
