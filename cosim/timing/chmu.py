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
  takes over the smallest counter and inherits its count. The counters are
  kept sorted, with the last position of every count value, so an
  increment and a takeover are a swap each (the "stream summary" of the
  paper, in arrays); a unit's counter is found by a direct index (what a
  CAM answers in hardware), not a hash probe, kept next to the unit's
  oracle count so that both come in one cache line, and checked against
  the slot's unit (an evicted unit's entry is left stale, not cleared: one
  random store fewer per takeover);
- ``count-min``: a depth x width sketch (Cormode and Muthukrishnan, 2005)
  and a table of the ``hot_list`` units with the largest estimates;
- ``sample``: every N-th access (or the first after each period of
  simulated time) with its type, as a sampling host daemon gets them.

Counting per access costs a few loads and stores (count-min: a hash probe
and a heap step); hot lists are drawn at epoch ends (``chmu_monitor``),
outside the kernels. Count-min's table holds units in slots with a min-heap
of slots by count and finds a unit's slot through an open-addressed hash
table (linear probing, deletion by backward shift).

Every counter lives in one int64 array (the arena) at offsets the
parameter array gives: the memory kernels carry the model's arrays from
call to call, and two arrays cost what two cost where two dozen, one per
counter table, made every memory access of every run measurably slower.
``views`` gives Python the same memory as named, shaped arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# params (from the configuration), then dimensions, then offsets into the arena
(CP_ON, CP_UNIT_SHIFT, CP_ACCESS, CP_DOWNSAMPLE, CP_CNT_MAX, CP_TRACKERS, CP_CM_DEPTH,
 CP_SAMPLE_EVERY, CP_SAMPLE_PERIOD,
 D_NINST, D_UNITS, D_K, D_LAST, D_CM_WIDTH, D_CMK, D_CMK_TABLE, D_SAMPLES, D_SS_CMAX,
 O_INST,                                         # into the params: inst rows
 O_S, O_SEEN, O_ORACLE, O_TOUCHED,
 O_SS_UNIT, O_SS_CNT, O_SS_ERR, O_SS_ORDER, O_SS_POS, O_SS_LAST, O_SS_SLOT,
 O_CM, O_CMK_UNIT, O_CMK_CNT, O_CMK_HEAP, O_CMK_POS, O_CMK_TABLE, O_CMK_SIZE,
 O_SAMPLES, O_SAMPLE_T, ARENA_LEN) = range(40)
NCPARAMS = 40

# tracker bits of CP_TRACKERS (the oracle always counts)
TR_SPACE_SAVING, TR_COUNT_MIN, TR_SAMPLE = 1, 2, 4

# access-type bits of CP_ACCESS
ACC_READ, ACC_WRITE = 1, 2

# columns of an inst row: the range an instance counts (its device's, narrowed by the
# range filter) and the index of its first unit in the oracle's counters
I_LO, I_HI, I_FIRST = range(3)
NICOLS = 3

# state scalars
S_DOWN, S_SAMPLE_LEFT, S_NEXT_SAMPLE_T, S_NSAMPLES, S_DROPPED, S_NTOUCHED, S_LAYOUT = range(7)
NSTATE = 7

#: S_LAYOUT of this arena layout (1, 2026-12-06: slot_of apart from the oracle and no
#: S_LAYOUT; 2: interleaved with it), so a snapshot's arena of another layout is not
#: read as this one
ARENA_LAYOUT = 2

# columns of seen (per instance): accesses the oracle and the trackers counted (since the
# counters last restarted), and this epoch's accesses and reads (whatever the mode)
SEEN_ORACLE, SEEN_TRACKED, SEEN_EPOCH, SEEN_EPOCH_READS = range(4)
NSEEN = 4

#: space-saving's counts saturate here at most (``last`` has an entry per count)
SS_MAX_COUNT = (1 << 20) - 1

#: a count-min table hash entry: (unit + 1) << SLOT_BITS | slot, 0 when empty
SLOT_BITS = 21
SLOT_MASK = (1 << SLOT_BITS) - 1

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_ROW = np.uint64(0x632BE59BD9B4E019)


class SpaceSaving(NamedTuple):
    """k counters per instance, sorted by count; every slot starts as a unit-less zero."""

    unit: np.ndarray    # [ninst, k]: the unit a slot holds (-1: none yet)
    cnt: np.ndarray     # [ninst, k]: its count (an overestimate by at most err)
    err: np.ndarray     # [ninst, k]: the count it inherited
    order: np.ndarray   # [ninst, k]: slots by ascending count
    pos: np.ndarray     # [ninst, k]: position in order, by slot
    last: np.ndarray    # [ninst, cap + 2]: last position holding each count (-1: none)
    slot_of: np.ndarray  # [units]: slot + 1 holding a unit (0: none), by oracle index
    #                      (interleaved with the oracle's counts: a strided view)


class TopK(NamedTuple):
    """Count-min's hottest units per instance: slots, a min-heap of slots, a hash table."""

    unit: np.ndarray    # [ninst, k]
    cnt: np.ndarray     # [ninst, k]: the unit's estimate
    heap: np.ndarray    # [ninst, k]: slots by heap position
    pos: np.ndarray     # [ninst, k]: heap position by slot
    table: np.ndarray   # [ninst, 2^b >= 2k]: hash entries (SLOT_BITS)
    size: np.ndarray    # [ninst]: slots in use


class ChmuArrays(NamedTuple):
    """Every counter of the CHMU instances, as views of the arena (see ``views``)."""

    p: np.ndarray        # int64[NCPARAMS + 3 ninst]: params, dimensions, offsets, inst rows
    arena: np.ndarray    # int64[ARENA_LEN]: everything below
    inst: np.ndarray     # [ninst, NICOLS] (a view of p)
    s: np.ndarray        # [NSTATE]
    seen: np.ndarray     # [ninst, NSEEN]
    oracle: np.ndarray   # [units]: accesses per unit this epoch (strided: slot_of between)
    touched: np.ndarray  # [units]: the units with a nonzero oracle count (S_NTOUCHED)
    ss: SpaceSaving
    cm: np.ndarray       # [ninst, depth, width]: count-min sketch
    cmk: TopK
    samples: np.ndarray  # [cap]: sampled oracle index << 1 | write (S_NSAMPLES this epoch)
    sample_t: np.ndarray  # [cap]: when (ticks)


def layout(p: np.ndarray, inst: np.ndarray, units: int, k: int, ss_cmax: int, depth: int,
           width: int, cmk: int, samples: int) -> np.ndarray:
    """Params with dimensions and offsets filled in, inst rows appended."""
    ninst = max(inst.shape[0], 1)
    table = 1
    while table < 2 * cmk:
        table *= 2
    p = np.concatenate([p[:NCPARAMS], inst.reshape(-1)]).astype(np.int64)
    p[D_NINST], p[D_UNITS], p[D_K], p[CP_CM_DEPTH] = inst.shape[0], units, k, depth
    p[D_LAST] = min(ss_cmax, SS_MAX_COUNT) + 2
    p[D_SS_CMAX] = min(ss_cmax, SS_MAX_COUNT)
    p[D_CM_WIDTH], p[D_CMK], p[D_CMK_TABLE], p[D_SAMPLES] = width, cmk, table, samples
    p[O_INST] = NCPARAMS
    # the oracle's count of unit g at O_ORACLE + 2 g, space-saving's slot_of at the next word
    sizes = [(O_S, NSTATE), (O_SEEN, ninst * NSEEN), (O_ORACLE, 2 * units), (O_TOUCHED, units),
             (O_SS_UNIT, ninst * k), (O_SS_CNT, ninst * k), (O_SS_ERR, ninst * k),
             (O_SS_ORDER, ninst * k), (O_SS_POS, ninst * k), (O_SS_LAST, ninst * p[D_LAST]),
             (O_CM, ninst * depth * width),
             (O_CMK_UNIT, ninst * cmk), (O_CMK_CNT, ninst * cmk), (O_CMK_HEAP, ninst * cmk),
             (O_CMK_POS, ninst * cmk), (O_CMK_TABLE, ninst * table), (O_CMK_SIZE, ninst),
             (O_SAMPLES, samples), (O_SAMPLE_T, samples)]
    at = 0
    for field, n in sizes:
        p[field] = at
        at += int(n)
    p[ARENA_LEN] = at
    p[O_SS_SLOT] = p[O_ORACLE] + 1
    return p


def views(p: np.ndarray, arena: np.ndarray) -> ChmuArrays:
    """Named, shaped views of the arena (the same memory the kernels update)."""
    ninst = max(int(p[D_NINST]), 1)
    k, units, cmk = int(p[D_K]), int(p[D_UNITS]), int(p[D_CMK])

    def v(field: int, *shape: int) -> np.ndarray:
        n = int(np.prod(shape))
        return arena[p[field]:p[field] + n].reshape(shape)

    pairs = v(O_ORACLE, units, 2)
    return ChmuArrays(
        p=p, arena=arena, inst=p[NCPARAMS:NCPARAMS + 3 * int(p[D_NINST])].reshape(-1, NICOLS),
        s=v(O_S, NSTATE), seen=v(O_SEEN, ninst, NSEEN), oracle=pairs[:, 0],
        touched=v(O_TOUCHED, units),
        ss=SpaceSaving(v(O_SS_UNIT, ninst, k), v(O_SS_CNT, ninst, k), v(O_SS_ERR, ninst, k),
                       v(O_SS_ORDER, ninst, k), v(O_SS_POS, ninst, k),
                       v(O_SS_LAST, ninst, int(p[D_LAST])), pairs[:, 1]),
        cm=v(O_CM, ninst, int(p[CP_CM_DEPTH]), int(p[D_CM_WIDTH])),
        cmk=TopK(v(O_CMK_UNIT, ninst, cmk), v(O_CMK_CNT, ninst, cmk), v(O_CMK_HEAP, ninst, cmk),
                 v(O_CMK_POS, ninst, cmk), v(O_CMK_TABLE, ninst, int(p[D_CMK_TABLE])),
                 v(O_CMK_SIZE, ninst)),
        samples=v(O_SAMPLES, int(p[D_SAMPLES])), sample_t=v(O_SAMPLE_T, int(p[D_SAMPLES])))


def clear_space_saving(S: SpaceSaving) -> None:
    """Every counter back to a unit-less zero (an epoch starts)."""
    k = S.unit.shape[1]
    S.unit[...] = -1
    S.cnt[...] = 0
    S.err[...] = 0
    S.order[...] = np.arange(k)
    S.pos[...] = np.arange(k)
    S.last[...] = -1
    S.last[:, 0] = k - 1
    S.slot_of[...] = 0


def clear_topk(T: TopK) -> None:
    """Empty every instance's table (an epoch starts)."""
    T.unit[...] = -1
    T.cnt[...] = 0
    T.table[...] = 0
    T.size[...] = 0


@njit(_nrt=False, cache=True, inline="always")
def _hash(unit: int, mask: int) -> int:
    # unsigned arithmetic for the product; int64 again before mixing with signed values
    return np.int64((np.uint64(unit) * _GOLD) >> np.uint64(32)) & mask


# -- count-min's table: hash table and min-heap over arena offsets ----------------

@njit(_nrt=False, cache=True, inline="always")
def _lookup(a: np.ndarray, tab: int, size: int, unit: int) -> int:
    """The slot of ``unit`` in the hash table at ``a[tab:tab + size]``, or -1."""
    mask = size - 1
    h = _hash(unit, mask)
    want = unit + 1
    while True:
        e = a[tab + h]
        if e == 0:
            return -1
        if (e >> SLOT_BITS) == want:
            return e & SLOT_MASK
        h = (h + 1) & mask


@njit(_nrt=False, cache=True, inline="always")
def _enter(a: np.ndarray, tab: int, size: int, unit: int, slot: int) -> None:
    mask = size - 1
    h = _hash(unit, mask)
    while a[tab + h] != 0:
        h = (h + 1) & mask
    a[tab + h] = (unit + 1) << SLOT_BITS | slot


@njit(_nrt=False, cache=True, inline="always")
def _delete(a: np.ndarray, tab: int, size: int, unit: int) -> None:
    """Delete ``unit``'s entry, shifting later entries of its probe run back."""
    mask = size - 1
    h = _hash(unit, mask)
    want = unit + 1
    while (a[tab + h] >> SLOT_BITS) != want:
        h = (h + 1) & mask
    j = h
    while True:
        j = (j + 1) & mask
        e = a[tab + j]
        if e == 0:
            break
        home = _hash((e >> SLOT_BITS) - 1, mask)
        # move e back into the hole at h unless its home lies cyclically in (h, j]
        if (j > h and (home <= h or home > j)) or (j < h and home <= h and home > j):
            a[tab + h] = e
            h = j
    a[tab + h] = 0


@njit(_nrt=False, cache=True, inline="always")
def _sift_down(a: np.ndarray, heap: int, pos: int, cnt: int, n: int, at: int) -> None:
    s = a[heap + at]
    c = a[cnt + s]
    while True:
        child = 2 * at + 1
        if child >= n:
            break
        if child + 1 < n and a[cnt + a[heap + child + 1]] < a[cnt + a[heap + child]]:
            child += 1
        if a[cnt + a[heap + child]] >= c:
            break
        a[heap + at] = a[heap + child]
        a[pos + a[heap + at]] = at
        at = child
    a[heap + at] = s
    a[pos + s] = at


@njit(_nrt=False, cache=True, inline="always")
def count_min(p: np.ndarray, a: np.ndarray, i: int, unit: int, cmax: int) -> None:
    """Count one access in the sketch and keep the units with the largest estimates."""
    width = p[D_CM_WIDTH]
    depth = p[CP_CM_DEPTH]
    row0 = p[O_CM] + i * depth * width
    est = cmax
    for r in range(depth):
        mult = _GOLD + np.uint64(2 * r) * _ROW
        at = row0 + r * width + (np.int64((np.uint64(unit) * mult) >> np.uint64(32)) & (width - 1))
        if a[at] < cmax:
            a[at] += 1
        if a[at] < est:
            est = a[at]
    k = p[D_CMK]
    units, cnt = p[O_CMK_UNIT] + i * k, p[O_CMK_CNT] + i * k
    heap, pos = p[O_CMK_HEAP] + i * k, p[O_CMK_POS] + i * k
    tsize = p[D_CMK_TABLE]
    tab = p[O_CMK_TABLE] + i * tsize
    size_at = p[O_CMK_SIZE] + i
    n = a[size_at]
    slot = _lookup(a, tab, tsize, unit)
    if slot >= 0:
        a[cnt + slot] = est
        _sift_down(a, heap, pos, cnt, n, a[pos + slot])
    elif n < k:
        # a free slot, sifted up the heap
        slot = n
        a[size_at] = n + 1
        a[units + slot] = unit
        a[cnt + slot] = est
        _enter(a, tab, tsize, unit, slot)
        at = slot
        while at > 0:
            parent = (at - 1) >> 1
            if a[cnt + a[heap + parent]] <= est:
                break
            a[heap + at] = a[heap + parent]
            a[pos + a[heap + at]] = at
            at = parent
        a[heap + at] = slot
        a[pos + slot] = at
    elif est > a[cnt + a[heap]]:
        slot = a[heap]
        _delete(a, tab, tsize, a[units + slot])
        a[units + slot] = unit
        a[cnt + slot] = est
        _enter(a, tab, tsize, unit, slot)
        _sift_down(a, heap, pos, cnt, n, 0)


# -- space-saving -------------------------------------------------------------------

@njit(_nrt=False, cache=True, inline="always")
def space_saving(p: np.ndarray, a: np.ndarray, i: int, unit: int, g: int) -> None:
    """Count one access to ``unit`` (oracle index ``g``) with k counters.

    A unit not held takes the smallest counter (a unit-less zero while there
    is one) and inherits its count; then the counter counts one more: it
    swaps to the end of its count's run in ``order`` and leads the next.
    """
    k = p[D_K]
    units, cnt = p[O_SS_UNIT] + i * k, p[O_SS_CNT] + i * k
    order, pos = p[O_SS_ORDER] + i * k, p[O_SS_POS] + i * k
    last = p[O_SS_LAST] + i * p[D_LAST]
    slot_of = p[O_SS_SLOT] + 2 * g
    slot = a[slot_of] - 1
    if slot < 0 or a[units + slot] != unit:
        # not held (an entry left by a unit since evicted names a slot that holds another)
        slot = a[order]
        a[units + slot] = unit
        a[p[O_SS_ERR] + i * k + slot] = a[cnt + slot]
        a[slot_of] = slot + 1
    c = a[cnt + slot]
    if c >= p[D_SS_CMAX]:
        return
    at = a[pos + slot]
    q = a[last + c]
    other = a[order + q]
    a[order + at] = other
    a[pos + other] = at
    a[order + q] = slot
    a[pos + slot] = q
    if q > 0 and a[cnt + a[order + q - 1]] == c:
        a[last + c] = q - 1
    else:
        a[last + c] = -1
    a[cnt + slot] = c + 1
    if a[last + c + 1] < 0:
        a[last + c + 1] = q


# -- every access ---------------------------------------------------------------------

@njit(_nrt=False, cache=True, inline="always")
def observe(p: np.ndarray, a: np.ndarray, addr: int, write: bool, t: int) -> None:
    """One line read or written at the CXL device at time ``t`` (ticks)."""
    kind = ACC_WRITE if write else ACC_READ
    if (p[CP_ACCESS] & kind) == 0:
        return
    i = -1
    row = NCPARAMS
    for j in range(p[D_NINST]):
        if p[row + I_LO] <= addr < p[row + I_HI]:
            i = j
            break
        row += NICOLS
    if i < 0:
        return
    local = (addr - p[row + I_LO]) >> p[CP_UNIT_SHIFT]
    g = p[row + I_FIRST] + local
    s = p[O_S]
    oracle = p[O_ORACLE] + 2 * g
    if a[oracle] == 0:
        a[p[O_TOUCHED] + a[s + S_NTOUCHED]] = g
        a[s + S_NTOUCHED] += 1
    a[oracle] += 1
    seen = p[O_SEEN] + i * NSEEN
    a[seen + SEEN_ORACLE] += 1
    a[seen + SEEN_EPOCH] += 1
    if not write:
        a[seen + SEEN_EPOCH_READS] += 1
    # the device's own trackers see every N-th access
    a[s + S_DOWN] -= 1
    if a[s + S_DOWN] > 0:
        return
    a[s + S_DOWN] = p[CP_DOWNSAMPLE]
    a[seen + SEEN_TRACKED] += 1
    trackers = p[CP_TRACKERS]
    if trackers & TR_SPACE_SAVING:
        space_saving(p, a, i, local, g)
    if trackers & TR_COUNT_MIN:
        count_min(p, a, i, local, p[CP_CNT_MAX])
    if trackers & TR_SAMPLE:
        if p[CP_SAMPLE_PERIOD] > 0:
            take = t >= a[s + S_NEXT_SAMPLE_T]
            if take:
                a[s + S_NEXT_SAMPLE_T] = t + p[CP_SAMPLE_PERIOD]
        else:
            a[s + S_SAMPLE_LEFT] -= 1
            take = a[s + S_SAMPLE_LEFT] <= 0
            if take:
                a[s + S_SAMPLE_LEFT] = p[CP_SAMPLE_EVERY]
        if take:
            n = a[s + S_NSAMPLES]
            if n < p[D_SAMPLES]:
                a[p[O_SAMPLES] + n] = (g << 1) | (1 if write else 0)
                a[p[O_SAMPLE_T] + n] = t
                a[s + S_NSAMPLES] = n + 1
            else:
                a[s + S_DROPPED] += 1
