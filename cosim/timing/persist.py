"""The timing model's state in a snapshot: every array, as msgpack.

The model is a handful of NamedTuples of numpy arrays (caches, memory
controllers, prefetchers, ownership table, cores), so saving it is a walk
over their fields. Arrays derived from the configuration (geometry,
latencies, address map: ``PARAM_FIELDS``) are not restored: they come from
the configuration of the restoring run, which may differ from the
snapshot's. A state array is restored when its shape and type match the new
model; one that does not (say, a bigger L2) starts cold, and the run says
which.
"""

from __future__ import annotations

from typing import Iterator

import msgpack
import numpy as np

from .state import Model

#: Fields computed from the configuration and the RAM layout, never loaded.
PARAM_FIELDS = frozenset({"H.C.geom", "H.Mm.params", "H.Mm.ranges", "H.Mm.ram", "H.Mm.ctrl",
                          "H.hp", "K.params"})

FORMAT = 1


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
    return msgpack.packb({"format": FORMAT, "ncores": model.ncores, "arrays": arrays,
                          "engine": engine, "config_toml": config_toml,
                          "config_digest": config_digest})


def loads(blob: bytes) -> dict:
    """Parse a timing state; ValueError when it is not one."""
    try:
        doc = msgpack.unpackb(blob)
    except Exception as e:
        raise ValueError(f"not msgpack ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "arrays" not in doc:
        raise ValueError("not a cosim timing state of format 1")
    return doc


def restore(model: Model, doc: dict) -> list[str]:
    """Copy the saved arrays into ``model`` in place; returns the names that start cold."""
    if doc["ncores"] != model.ncores:
        raise ValueError(f"timing state is for {doc['ncores']} cores, the run has {model.ncores}")
    cold = []
    saved = doc["arrays"]
    for name, a in _arrays(model):
        if name in PARAM_FIELDS:
            continue
        s = saved.get(name)
        if s is None or np.dtype(s["dtype"]) != a.dtype or tuple(s["shape"]) != a.shape:
            cold.append(name)
            continue
        data = np.frombuffer(s["data"], dtype=a.dtype)
        if data.size != a.size:
            raise ValueError(f"timing state array {name} is truncated")
        a[...] = data.reshape(a.shape)
    return cold
