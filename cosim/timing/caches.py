"""Set-associative caches stored as flat numpy arrays, for numba kernels.

Every cache of the machine (per-core L1I, L1D, L2 and the LLC slices) lives
in the same flat per-line arrays; row ``cid`` of ``geom`` says where its
sets start and how it is shaped.

The layout is chosen for the host's caches, which bound the kernels' speed:
a simulated miss searches several sets of caches far larger than the host's
own (the L2s and the LLC are megabytes of model state), so every host cache
line a search touches costs tens to hundreds of nanoseconds.

- ``key`` packs a line's address and its MESI state into one word
  (``line << 2 | state``), so a search reads one array: a 16-way set is two
  host cache lines (the arrays are 64-byte aligned). A free way has state I
  and keeps its last tag.
- ``rank`` is the recency order within a set, one byte per way (0 = used
  last, ``ways - 1`` = the least recently used; for FIFO, inserted last),
  instead of a 64-bit time stamp per way: the victim search and an update
  read one host line per set, not two, and a hit on the line a set used
  last, the common case, changes nothing. The ranks of a set are always a
  permutation of ``0 .. ways - 1``, so they order the ways exactly as
  stamps from a global clock did.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# MESI states (the LLC uses I, S = clean, M = dirty), the low two bits of a key
I, S, E, M = 0, 1, 2, 3
STATE_BITS = 2
STATE_MASK = 3
FREE_KEY = -1 << STATE_BITS     # a way never filled: tag -1, state I

POLICY_LRU, POLICY_FIFO, POLICY_RANDOM = 0, 1, 2
POLICIES = {"lru": POLICY_LRU, "fifo": POLICY_FIFO, "random": POLICY_RANDOM}

# columns of geom
G_OFFSET, G_SETS, G_WAYS, G_POLICY, G_LATENCY = range(5)
NGEOM = 5

# columns of stats
CS_ACCESSES, CS_MISSES, CS_WRITEBACKS, CS_INVALIDATIONS, CS_DOWNGRADES, CS_PREFETCHES = range(6)
NCSTATS = 6
CSTAT_NAMES = ("accesses", "misses", "writebacks", "invalidations", "downgrades", "prefetches")

HOST_LINE = 64                  # bytes: the arrays start on a host cache line


class CacheArrays(NamedTuple):
    """All caches of the machine (see module docstring)."""

    key: np.ndarray      # int64[lines]: line address << 2 | MESI state
    rank: np.ndarray     # uint8[lines]: recency within the set, 0 = most recent
    ready: np.ndarray    # int64[lines]: time the fill completes (in-flight lines)
    src: np.ndarray      # int8[lines]: hierarchy level that served the fill
    geom: np.ndarray     # int64[ncaches, NGEOM]
    stats: np.ndarray    # int64[ncaches, NCSTATS]
    rng: np.ndarray      # uint64[ncaches]: xorshift state for random replacement


def aligned(n: int, dtype: np.dtype | type, fill: int) -> np.ndarray:
    """``np.full(n, fill, dtype)`` starting on a host cache line."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + HOST_LINE, dtype=np.uint8)
    skip = -raw.ctypes.data % HOST_LINE
    a = raw[skip:skip + n * itemsize].view(dtype)
    a[...] = fill
    return a


def fresh_ranks(sets: int, ways: int) -> np.ndarray:
    """Ranks of an empty cache: way w of every set has rank w."""
    return np.tile(np.arange(ways, dtype=np.uint8), sets)


def allocate(shapes: list[tuple[int, int, int, int]], seed: int) -> CacheArrays:
    """Caches from (sets, ways, policy, latency ticks) rows, all lines invalid."""
    geom = np.zeros((len(shapes), NGEOM), dtype=np.int64)
    offset = 0
    for cid, (sets, ways, policy, latency) in enumerate(shapes):
        geom[cid] = (offset, sets, ways, policy, latency)
        offset += sets * ways
    rng = np.array([(seed * 0x9E3779B97F4A7C15 + cid + 1) % (1 << 64) or 1
                    for cid in range(len(shapes))], dtype=np.uint64)
    rank = aligned(offset, np.uint8, 0)
    for off, sets, ways, _, _ in geom:
        rank[off:off + sets * ways] = fresh_ranks(int(sets), int(ways))
    return CacheArrays(
        key=aligned(offset, np.int64, FREE_KEY),
        rank=rank,
        ready=aligned(offset, np.int64, 0),
        src=aligned(offset, np.int8, 0),
        geom=geom,
        stats=np.zeros((len(shapes), NCSTATS), dtype=np.int64),
        rng=rng,
    )


@intrinsic
def _host_prefetch(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Have the host CPU start loading ``arr[idx]`` into its caches (LLVM's prefetch).

    A hint: it changes no value the kernels compute, only when the host
    has the data at hand.
    """
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1]],
                                       wraparound=False, boundscheck=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        # a read, to be kept in every level, of data
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(_nrt=False, cache=True, inline="always")
def warm_set(C: CacheArrays, cid: int, key: int, ranks: bool) -> None:
    """Have the host start loading the keys (and ``ranks``) of the set of ``key``.

    A miss searches sets of several caches that are far larger than the
    host's own; loading them at once, rather than each when its search
    begins, overlaps the host's cache misses.
    """
    base = set_base(C, cid, key)
    _host_prefetch(C.key, base)
    last = base + C.geom[cid, G_WAYS] - 1
    if last - base >= HOST_LINE // 8:
        _host_prefetch(C.key, last)
    if ranks:
        _host_prefetch(C.rank, base)


@njit(_nrt=False, cache=True, inline="always")
def u(i: int) -> np.uint64:
    """A slot index as unsigned: numba then indexes without the code that wraps
    negative indices around (a third of a set search's instructions)."""
    return np.uint64(i)


@njit(_nrt=False, cache=True, inline="always")
def state(C: CacheArrays, j: int) -> int:
    """MESI state of slot ``j``."""
    return C.key[u(j)] & STATE_MASK


@njit(_nrt=False, cache=True, inline="always")
def set_state(C: CacheArrays, j: int, s: int) -> None:
    """Give slot ``j`` state ``s``, keeping its line (I frees the way)."""
    C.key[u(j)] = (C.key[u(j)] & ~STATE_MASK) | s


@njit(_nrt=False, cache=True, inline="always")
def holds(C: CacheArrays, j: int, line: int) -> bool:
    """Slot ``j`` holds ``line`` in a state other than I."""
    d = C.key[u(j)] - (line << STATE_BITS)
    return 0 < d <= STATE_MASK


@njit(_nrt=False, cache=True, inline="always")
def set_base(C: CacheArrays, cid: int, key: int) -> int:
    """Index of way 0 of the set that ``key`` selects."""
    g = u(cid)
    return C.geom[g, G_OFFSET] + (key & (C.geom[g, G_SETS] - 1)) * C.geom[g, G_WAYS]


@njit(_nrt=False, cache=True, inline="always")
def find(C: CacheArrays, cid: int, key: int, line: int) -> int:
    """Slot holding ``line`` in cache ``cid``, or -1."""
    base = set_base(C, cid, key)
    ub = u(base)
    lk = line << STATE_BITS
    for w in range(C.geom[u(cid), G_WAYS]):
        d = C.key[ub + u(w)] - lk
        if 0 < d <= STATE_MASK:
            return base + w
    return -1


@njit(_nrt=False, cache=True, inline="always")
def _promote(C: CacheArrays, base: int, ways: int, j: int) -> None:
    """Make slot ``j`` the most recent of its set; the ways more recent than it age by one."""
    old = C.rank[u(j)]
    if old == 0:
        return
    ub = u(base)
    for w in range(ways):
        r = C.rank[ub + u(w)]
        C.rank[ub + u(w)] = r + (r < old)
    C.rank[u(j)] = 0


@njit(_nrt=False, cache=True, inline="always")
def touch(C: CacheArrays, cid: int, key: int, j: int) -> None:
    """Record a use of slot ``j`` in the set of ``key`` (only LRU cares)."""
    # a hit on the set's most recent way, the common case, changes nothing
    if C.rank[u(j)] != 0 and C.geom[u(cid), G_POLICY] == POLICY_LRU:
        _promote(C, set_base(C, cid, key), C.geom[u(cid), G_WAYS], j)


@njit(_nrt=False, cache=True, inline="always")
def _free_way(C: CacheArrays, ub: np.uint64, ways: int) -> int:
    """The first way in state I of the set at ``ub``, or ``ways`` if none."""
    w = 0
    while w < ways and C.key[ub + u(w)] & STATE_MASK != I:
        w += 1
    return w


@njit(_nrt=False, cache=True, inline="always")
def _oldest_way(C: CacheArrays, ub: np.uint64, ways: int) -> int:
    """The least recent way of the set at ``ub`` (it has the last rank)."""
    w = 0
    while C.rank[ub + u(w)] != ways - 1:
        w += 1
    return w


@njit(_nrt=False, cache=True, inline="always")
def victim(C: CacheArrays, cid: int, key: int) -> int:
    """Slot to fill in the set of ``key``: the first free way, else by policy."""
    base = set_base(C, cid, key)
    ways = C.geom[u(cid), G_WAYS]
    w = _free_way(C, u(base), ways)
    if w < ways:
        return base + w
    if C.geom[u(cid), G_POLICY] != POLICY_RANDOM:
        return base + _oldest_way(C, u(base), ways)
    x = C.rng[cid]
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    C.rng[cid] = x
    return base + int(x % np.uint64(ways))


@njit(_nrt=False, cache=True, inline="always")
def victim_guess(C: CacheArrays, cid: int, key: int) -> int:
    """The slot ``victim`` would pick if the set stayed as it is (the least recent
    way standing in for a random policy's pick): for warming the host only."""
    base = set_base(C, cid, key)
    ways = C.geom[u(cid), G_WAYS]
    w = _free_way(C, u(base), ways)
    return base + (w if w < ways else _oldest_way(C, u(base), ways))


@njit(_nrt=False, cache=True, inline="always")
def install(C: CacheArrays, cid: int, key: int, j: int, line: int, state: int, ready: int,
            src: int) -> None:
    """Put ``line`` in slot ``j`` of the set of ``key`` (the caller has dealt with the old line).

    ``ready`` is when the data arrives and ``src`` the level it comes from:
    an access that finds the line still in flight (a second miss to the
    same line, or a prefetch not yet complete) waits for it and is charged
    to that level, as an MSHR merge would be. The line becomes the most
    recent of its set under every policy (FIFO orders by insertion).
    """
    C.key[u(j)] = (line << STATE_BITS) | state
    C.ready[u(j)] = ready
    C.src[u(j)] = src
    _promote(C, set_base(C, cid, key), C.geom[cid, G_WAYS], j)
