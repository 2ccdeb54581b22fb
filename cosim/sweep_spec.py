"""``cosim sweep SPEC.toml``: the points of a sweep, from a spec checked before anything runs.

A spec has a ``[base]`` table with one run's settings, named as ``cosim
run``'s flags (``snapshot``, ``kernel``, ``smp``, ``workload``, ``args``,
``numa``, ``timing``, ``preset``, ``chmu``, ``quantum``, ``max_insns``), and
either an ``[axes]`` table, mapping a flag or a dotted timing-configuration
field (``"cxl.device_latency_ns"``) to the list of its values, whose grid is
the sweep, or a ``[[points]]`` list of explicit points (each a table of the
same keys). Every value is checked here, against the flag's or the field's
range (``timing.config``), so that a bad spec is one line before the first
point runs.

Each point has a digest over its effective settings (the base, its values,
and the timing configuration they give): a rerun of the same spec skips the
points whose digest already has a result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CosimError
from .timing import config as timing_config

#: ``cosim run`` flags a spec may set, and the type of their values
FLAGS: dict[str, type] = {
    "snapshot": str, "kernel": str, "smp": int, "quantum": int, "max_insns": int,
    "workload": str, "args": str, "numa": str, "timing": bool, "preset": str, "chmu": str,
}
#: limits of the integer flags (those of ``cosim run``)
_INT_RANGES = {"smp": (1, 64), "quantum": (1, 1 << 20), "max_insns": (1, 1 << 62)}


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its flags, its timing-config overrides, what varies, its digest."""

    flags: dict[str, Any]
    config: dict[str, dict[str, Any]]       # nested [section] tables over the preset
    params: dict[str, Any]                  # the axes' values at this point (the table's columns)
    digest: str


@dataclass(frozen=True)
class Spec:
    """A checked sweep: its file and its points, in the spec's order."""

    path: Path
    points: list[Point]

    def with_kernels(self, resolved: dict[str, str]) -> "Spec":
        """The same points, each ``kernel`` replaced by its absolute path (``resolved``), so
        that every worker runs the same file whatever its working directory; the digests
        stay (the kernel's bytes are in ``salted``'s inputs)."""
        return dataclasses.replace(self, points=[
            dataclasses.replace(p, flags={**p.flags, "kernel": resolved[p.flags["kernel"]]})
            if "kernel" in p.flags else p for p in self.points])

    def salted(self, inputs: str) -> "Spec":
        """The same points, their digests also over ``inputs`` (what else decides a result:
        cosim's code, the snapshots, the kernels), so that resume never reuses a result of
        other code or another snapshot of the same name."""
        return dataclasses.replace(self, points=[
            dataclasses.replace(p, digest=hashlib.blake2b(f"{p.digest}\0{inputs}".encode(),
                                                          digest_size=8).hexdigest())
            for p in self.points])


def _check_flag(where: str, key: str, value: Any) -> Any:
    kind = FLAGS[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CosimError(f"{where}: {key} = {value!r}: want a whole number")
    if kind is bool and not isinstance(value, bool):
        raise CosimError(f"{where}: {key} = {value!r}: want true or false")
    if kind is str and not isinstance(value, str):
        raise CosimError(f"{where}: {key} = {value!r}: want a string")
    if key in _INT_RANGES:
        lo, hi = _INT_RANGES[key]
        if not lo <= value <= hi:
            raise CosimError(f"{where}: {key} = {value}: want {lo}..{hi}")
    if key == "preset" and value not in timing_config.PRESETS:
        raise CosimError(f"{where}: preset = {value!r}: want one of "
                         f"{', '.join(timing_config.PRESETS)}")
    return value


def _split(where: str, key: str) -> tuple[str, str] | None:
    """``section.field`` of the timing configuration, or None for a flag; else one line."""
    if key in FLAGS:
        return None
    section, dot, name = key.partition(".")
    if not dot:
        raise CosimError(f"{where}: unknown field {key!r}: want a flag of cosim run "
                         f"({', '.join(FLAGS)}) or a timing field such as cxl.device_latency_ns")
    if section not in timing_config.SECTIONS:
        raise CosimError(f"{where}: unknown field {key!r}: timing sections are "
                         f"{', '.join(timing_config.SECTIONS)}")
    return section, name


def _settings(where: str, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict]]:
    """Flags and nested config overrides of one table of settings, each checked."""
    flags: dict[str, Any] = {}
    config: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        target = _split(where, key)
        if target is None:
            flags[key] = _check_flag(where, key, value)
        else:
            config.setdefault(target[0], {})[target[1]] = value
    return flags, config


def _effective(where: str, flags: dict[str, Any], config: dict[str, dict]) -> dict:
    """The timing configuration a point runs with, checked field by field (one line if not)."""
    try:
        cfg = timing_config.with_overrides(flags.get("preset"), config, where)
    except CosimError as e:
        msg = str(e).replace("\n", " ")
        raise CosimError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return timing_config.to_plain(cfg)


def _digest(flags: dict[str, Any], plain_config: dict) -> str:
    blob = json.dumps({"flags": flags, "config": plain_config}, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def load(path: Path) -> Spec:
    """Read and check ``path``; one-line errors name the bad key or value."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise CosimError(f"sweep spec {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise CosimError(f"sweep spec {path}: not TOML ({e})") from None
    unknown = set(doc) - {"base", "axes", "points"}
    if unknown:
        raise CosimError(f"sweep spec {path}: unknown table [{sorted(unknown)[0]}]; a spec has "
                         "[base] and [axes] or [[points]]")
    base = doc.get("base", {})
    if not isinstance(base, dict):
        raise CosimError(f"sweep spec {path}: [base] must be a table")
    axes, listed = doc.get("axes"), doc.get("points")
    if (axes is None) == (listed is None):
        raise CosimError(f"sweep spec {path}: give either [axes] (a grid) or [[points]]")
    if axes is not None:
        if not isinstance(axes, dict) or not axes:
            raise CosimError(f"sweep spec {path}: [axes] must map fields to lists of values")
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise CosimError(f"sweep spec {path}: axis {key!r} must be a non-empty list "
                                 f"of values (is {values!r})")
        names = list(axes)
        combos = [dict(zip(names, vals)) for vals in itertools.product(*axes.values())]
    else:
        if not isinstance(listed, list) or not listed or \
                not all(isinstance(p, dict) and p for p in listed):
            raise CosimError(f"sweep spec {path}: [[points]] must be a non-empty list of tables")
        combos = listed
    base_flags, base_config = _settings(f"sweep spec {path} [base]", base)
    points, seen = [], set()
    for i, params in enumerate(combos):
        where = f"sweep spec {path} point {i} ({', '.join(f'{k}={v}' for k, v in params.items())})"
        flags, config = _settings(where, params)
        flags = {**base_flags, **flags}
        merged = {s: dict(t) for s, t in base_config.items()}
        for s, t in config.items():
            merged.setdefault(s, {}).update(t)
        if merged and flags.get("timing") is False:
            raise CosimError(f"{where}: timing fields ({', '.join(merged)}) need timing = true")
        plain = _effective(where, flags, merged)
        digest = _digest(flags, plain)
        if digest in seen:
            raise CosimError(f"{where}: the same run as an earlier point")
        seen.add(digest)
        points.append(Point(flags=flags, config=merged, params=dict(params), digest=digest))
    if not any("snapshot" in p.flags or "kernel" in p.flags for p in points):
        raise CosimError(f"sweep spec {path}: say what runs: snapshot = NAME or kernel = ELF "
                         "in [base] or each point")
    return Spec(path=path, points=points)
