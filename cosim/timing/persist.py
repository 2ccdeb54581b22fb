"""The timing model's state in a snapshot: every array, as msgpack.

The model is a handful of NamedTuples of numpy arrays (caches, memory
controllers, prefetchers, ownership table, cores), so saving it is a walk
over their fields. Arrays derived from the configuration (geometry,
latencies, address map: ``PARAM_FIELDS``) are not restored: they come from
the configuration of the restoring run, which may differ from the
snapshot's. A state array is restored when its shape and type match the new
model; one that does not (say, a bigger L2) starts cold, and the run says
which.

Format 2 keeps a cache line's address and state in one word and a set's
recency order as a rank per way (``caches``), and a prefetcher's stream
table by field; a snapshot of format 1 (separate tags, states and 64-bit
stamps, streams by stream) is converted on restore, ranks taken from the
order of the stamps, which is the order they stood for.

Lines are restored per cache and by geometry: a cache is kept when its
number of sets and ways are those of the snapshot's (wherever it now sits
in the flat arrays), and starts cold otherwise, even if the arrays keep
their shape (the same total lines in other ways or slices would put lines
in the wrong sets). A core whose L2 starts cold gets cold L1s too, and an
inclusive LLC that starts cold empties every cache, so the hierarchy's
inclusion still holds.
"""

from __future__ import annotations

from typing import Iterator

import msgpack
import numpy as np

from .caches import FREE_KEY, G_OFFSET, G_SETS, G_WAYS, STATE_BITS, fresh_ranks
from .state import Model

#: Per-line arrays of all caches (``CacheArrays``), restored cache by cache.
LINE_FIELDS = ("H.C.key", "H.C.rank", "H.C.ready", "H.C.src")
#: ... and those of format 1, which ``_upgrade`` turns into the above.
LINE_FIELDS_1 = ("H.C.tags", "H.C.state", "H.C.stamp", "H.C.ready", "H.C.src")

#: Fields computed from the configuration and the RAM layout, never loaded.
PARAM_FIELDS = frozenset({"H.C.geom", "H.Mm.params", "H.Mm.ranges", "H.Mm.ram", "H.Mm.ctrl",
                          "H.hp", "K.params", "H.Mm.chmu_p"})

FORMAT = 2


def _arrays(model: Model) -> Iterator[tuple[str, np.ndarray]]:
    """(dotted name, array) of every array the kernels read or update."""
    def walk(prefix: str, obj: object) -> Iterator[tuple[str, np.ndarray]]:
        if isinstance(obj, np.ndarray):
            yield prefix, obj
        elif hasattr(obj, "_fields"):
            for name in obj._fields:  # type: ignore[attr-defined]
                yield from walk(f"{prefix}.{name}", getattr(obj, name))
    yield from walk("H", model.H)
    yield from walk("K", model.K)


def dumps(model: Model, engine: dict, config_toml: str, config_digest: str) -> bytes:
    """msgpack of the model's state arrays, the engine's state and the configuration."""
    arrays = {name: {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
              for name, a in _arrays(model) if name not in PARAM_FIELDS}
    geom = model.H.C.geom
    return msgpack.packb({"format": FORMAT, "ncores": model.ncores, "arrays": arrays,
                          "cache_geometry": [[int(g[G_OFFSET]), int(g[G_SETS]), int(g[G_WAYS])]
                                             for g in geom],
                          "engine": engine, "config_toml": config_toml,
                          "config_digest": config_digest})


def cache_names(ncores: int, ncaches: int) -> list[str]:
    """Names of the caches by id (as the statistics give them)."""
    names = [f"{level}.{c}" for level in ("l1i", "l1d", "l2") for c in range(ncores)]
    return names + [f"llc.{s}" for s in range(ncaches - len(names))]


def restore(model: Model, doc: dict) -> list[str]:
    """Copy the saved arrays into ``model`` in place; returns the names that start cold."""
    if doc["ncores"] != model.ncores:
        raise ValueError(f"timing state is for {doc['ncores']} cores, the run has {model.ncores}")
    cold = []
    doc = _upgrade(doc)
    saved = doc["arrays"]
    by_geometry = "cache_geometry" in doc
    for name, a in _arrays(model):
        if name in PARAM_FIELDS or (by_geometry and name in LINE_FIELDS):
            continue
        s = saved.get(name)
        if s is None or np.dtype(s["dtype"]) != a.dtype or tuple(s["shape"]) != a.shape:
            cold.append(name)
            continue
        a[...] = _data(name, s, a.size).reshape(a.shape)
    if by_geometry:
        cold += _restore_lines(model, doc)
    return cold


def _upgrade(doc: dict) -> dict:
    """A format-1 document with its cache lines in format 2's arrays (key, rank).

    The ranks of a set are the order of its ways' stamps, latest first
    (stamps tie only for ways never filled, which keep the order of the
    way numbers, as fresh ranks do). Without a cache geometry (older
    still) the lines are left out and start cold.
    """
    saved = doc["arrays"]
    if "H.C.tags" not in saved:
        return doc
    arrays = {k: v for k, v in saved.items() if k not in ("H.C.tags", "H.C.state", "H.C.stamp",
                                                           "H.C.clock")}
    if "H.C.clock" in saved:
        arrays["H.pf_clock"] = saved["H.C.clock"]
    pf = saved.get("H.pf")
    if pf is not None and len(pf["shape"]) == 3:
        # format 1 kept a stream's fields together, format 2 a field's streams
        n, streams, fields = pf["shape"]
        a = _data("H.pf", pf, n * streams * fields).reshape(n, streams, fields)
        arrays["H.pf"] = {"dtype": pf["dtype"], "shape": [n, fields, streams],
                          "data": np.ascontiguousarray(a.transpose(0, 2, 1)).tobytes()}
    was = doc.get("cache_geometry")
    if was is not None:
        lines = sum(sets * ways for _, sets, ways in was)
        tags, state, stamp = (_data(f, saved[f], lines) for f in LINE_FIELDS_1[:3])
        key = (tags.astype(np.int64) << STATE_BITS) | state.astype(np.int64)
        rank = np.zeros(lines, dtype=np.uint8)
        for offset, sets, ways in was:
            st = stamp[offset:offset + sets * ways].reshape(sets, ways)
            order = np.argsort(-st, axis=1, kind="stable")
            r = np.empty((sets, ways), dtype=np.uint8)
            r[np.arange(sets)[:, None], order] = np.arange(ways, dtype=np.uint8)
            rank[offset:offset + sets * ways] = r.ravel()
        for name, a in (("H.C.key", key), ("H.C.rank", rank)):
            arrays[name] = {"dtype": a.dtype.str, "shape": [lines], "data": a.tobytes()}
    else:
        for name in ("H.C.ready", "H.C.src"):
            arrays.pop(name, None)
    return dict(doc, arrays=arrays)


def _data(name: str, s: dict, size: int) -> np.ndarray:
    data = np.frombuffer(s["data"], dtype=np.dtype(s["dtype"]))
    if data.size != size:
        raise ValueError(f"timing state array {name} is truncated")
    return data


def _restore_lines(model: Model, doc: dict) -> list[str]:
    """The caches' lines, each cache whose sets and ways are the snapshot's; the names left cold."""
    C = model.H.C
    geom = C.geom
    was = doc["cache_geometry"]
    n = model.ncores
    names = cache_names(n, geom.shape[0])
    keep = [cid < len(was) and tuple(was[cid][1:]) == (int(geom[cid, G_SETS]),
                                                         int(geom[cid, G_WAYS]))
            for cid in range(geom.shape[0])]
    for c in range(n):                    # inclusion: L1s only within a kept L2
        if not keep[2 * n + c]:
            keep[c] = keep[n + c] = False
    if model.cfg.llc.inclusive and not all(keep[3 * n:]):
        keep = [False] * len(keep)
    saved_lines = sum(w[1] * w[2] for w in was)
    for field in LINE_FIELDS:
        s = doc["arrays"].get(field)
        a = getattr(C, field.rsplit(".", 1)[1])
        if s is None or np.dtype(s["dtype"]) != a.dtype:
            keep = [False] * len(keep)
            continue
        data = _data(field, s, saved_lines)
        for cid in range(geom.shape[0]):
            if keep[cid]:
                lines = int(geom[cid, G_SETS] * geom[cid, G_WAYS])
                a[geom[cid, G_OFFSET]:geom[cid, G_OFFSET] + lines] = \
                    data[was[cid][0]:was[cid][0] + lines]
    # a cache left cold after another field was copied: make it cold in every field
    for cid in range(geom.shape[0]):
        if not keep[cid]:
            lo = geom[cid, G_OFFSET]
            sets, ways = int(geom[cid, G_SETS]), int(geom[cid, G_WAYS])
            hi = lo + sets * ways
            C.key[lo:hi] = FREE_KEY
            C.rank[lo:hi] = fresh_ranks(sets, ways)
            C.ready[lo:hi] = 0
            C.src[lo:hi] = 0
    return [names[cid] for cid in range(geom.shape[0]) if not keep[cid]]
