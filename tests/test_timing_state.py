"""The timing model's snapshot state: format 1 (tags, states, 64-bit stamps) restores as format 2.

Unit tests on the kernels alone: the trace is synthetic (no QEMU), the
cache geometry the default's, so they run in a second.
"""

from __future__ import annotations

import msgpack
import numpy as np

from cosim.timing import config, core, persist, state
from cosim.timing.caches import G_OFFSET, G_SETS, G_WAYS, STATE_BITS
from cosim.trace import KIND_IFETCH, KIND_LOAD, KIND_STORE, RECORD_DTYPE

RAM = [(0x80000000, 256 << 20)]
CORES = 2


def _trace(seed: int, n: int = 20_000) -> np.ndarray:
    """Fetches, loads and stores over a few MiB: misses, write-backs, LRU reordering."""
    rng = np.random.default_rng(seed)
    recs = np.zeros(n, dtype=RECORD_DTYPE)
    recs["idx"] = np.arange(n) * 3
    recs["kind"] = rng.choice([KIND_IFETCH, KIND_LOAD, KIND_STORE], size=n, p=[0.3, 0.4, 0.3])
    recs["addr"] = 0x80000000 + (rng.integers(0, 4 << 20, size=n) & ~7)
    recs["size"] = 8
    return recs


def _feed(model: state.Model, seed: int) -> list[int]:
    return [int(core.run_turn(model.K, model.H, c, _trace(seed + c), 60_000))
            for c in range(CORES)]


def _fresh() -> state.Model:
    return state.build(config.load(), CORES, RAM)


def _as_format_1(doc: dict) -> dict:
    """A format-2 state document written the way format 1 kept caches and streams."""
    arrays = dict(doc["arrays"])
    key = np.frombuffer(arrays.pop("H.C.key")["data"], dtype=np.int64)
    rank = np.frombuffer(arrays.pop("H.C.rank")["data"], dtype=np.uint8)
    # any stamps whose order within a set is the ranks' (larger = more recent)
    stamp = (1000 - rank.astype(np.int64)) + np.arange(key.size) // 64 * 1000
    old = {"H.C.tags": key >> STATE_BITS, "H.C.state": (key & 3).astype(np.int8),
           "H.C.stamp": stamp}
    for name, a in old.items():
        arrays[name] = {"dtype": a.dtype.str, "shape": [a.size], "data": a.tobytes()}
    arrays["H.C.clock"] = arrays.pop("H.pf_clock")
    pf = arrays["H.pf"]
    n, fields, streams = pf["shape"]
    a = np.frombuffer(pf["data"], dtype=np.int64).reshape(n, fields, streams)
    arrays["H.pf"] = {"dtype": pf["dtype"], "shape": [n, streams, fields],
                      "data": np.ascontiguousarray(a.transpose(0, 2, 1)).tobytes()}
    return dict(doc, format=1, arrays=arrays)


def test_format_1_restores_as_the_same_state_and_continues_the_same() -> None:
    model = _fresh()
    _feed(model, 1)
    doc = msgpack.unpackb(persist.dumps(model, {}, "", ""))
    assert doc["format"] == 2

    as_2, as_1 = _fresh(), _fresh()
    assert persist.restore(as_2, doc) == []
    assert persist.restore(as_1, _as_format_1(doc)) == []
    for (name, a), (_, b) in zip(persist._arrays(as_2), persist._arrays(as_1)):
        assert np.array_equal(a, b), name
    assert _feed(as_2, 7) == _feed(as_1, 7)


def test_ranks_stay_a_permutation_of_the_ways() -> None:
    """Every set's ranks are 0..ways-1 in some order, so the last rank is always the LRU way."""
    model = _fresh()
    _feed(model, 3)
    C = model.H.C
    for offset, sets, ways in C.geom[:, [G_OFFSET, G_SETS, G_WAYS]]:
        r = np.sort(C.rank[offset:offset + sets * ways].reshape(sets, ways), axis=1)
        assert (r == np.arange(ways)).all()
