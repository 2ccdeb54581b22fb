"""Timing-model configuration: documented defaults, presets, TOML files.

Defaults describe a small server core with one DDR4 channel and a CXL
type-3 expander; each field's comment cites where its value comes from.
Files are read with the standard library's ``tomllib``; ``cosim config
show`` writes the effective configuration with ``tomlkit`` so that the
comments survive. Every field is checked by name against its range.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomlkit

from ..errors import CosimError


def F(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "",
      choices: tuple[str, ...] = ()) -> Any:
    """A config field with its accepted range and the comment printed beside it."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "doc": doc, "choices": choices})


@dataclass(frozen=True)
class CoreConfig:
    frequency_ghz: float = F(3.0, 0.1, 10.0, "core clock; server parts run 2-4 GHz")
    base_cpi: float = F(0.25, 0.05, 10.0, "cycles per instruction without stalls: 1/issue width "
                        "(4-wide, Sniper's Nehalem model)")
    rob: int = F(256, 1, 4096, "reorder buffer entries: a miss stalls dispatch this many "
                 "instructions later (Skylake 224, Golden Cove 512)")
    mlp: int = F(32, 1, 256, "outstanding misses per core (L2 miss queue, which prefetchers "
                 "keep full on streams: Skylake 32, Golden Cove 48)")
    store_buffer: int = F(56, 1, 1024, "store buffer entries; stores leave it in program "
                          "order (Skylake 56, Golden Cove 114)")
    io_latency: int = F(100, 0, 100000, "cycles per uncached device (MMIO) access")


@dataclass(frozen=True)
class CacheConfig:
    size_kib: int = F(32, 1, 1 << 20, "capacity in KiB")
    ways: int = F(8, 1, 64, "associativity")
    latency: int = F(4, 1, 1000, "load-to-use cycles of a hit")
    replacement: str = F("lru", doc="replacement policy", choices=("lru", "fifo", "random"))


@dataclass(frozen=True)
class PrefetchConfig:
    distance: int = F(20, 0, 64, "L2 stream prefetcher: lines ahead of the demand, within "
                      "the page; 0 turns it off (Intel optimization manual: up to 20)")
    streams: int = F(32, 1, 256, "streams tracked per core (Intel L2 streamer: 32)")


@dataclass(frozen=True)
class LlcConfig:
    size_kib: int = F(8192, 64, 1 << 20, "total capacity in KiB, all slices (Sniper: 8 MiB)")
    ways: int = F(16, 1, 64, "associativity")
    latency: int = F(40, 1, 1000, "load-to-use cycles of a hit (Sniper LLC slices: 30-40)")
    replacement: str = F("lru", doc="replacement policy", choices=("lru", "fifo", "random"))
    slices: int = F(4, 1, 64, "address-interleaved slices (power of two)")
    inclusive: bool = F(False, doc="evicting an LLC line invalidates private copies")
    line_bytes: int = F(64, 32, 256, "cache line size of every cache (power of two)")


@dataclass(frozen=True)
class CoherenceConfig:
    upgrade_latency: int = F(40, 1, 10000, "cycles to invalidate other sharers on a write to a "
                             "shared line: a directory (LLC) round trip")
    transfer_latency: int = F(60, 1, 10000, "cycles to fetch a line dirty in another core's "
                              "cache (cache-to-cache, about LLC + snoop)")


@dataclass(frozen=True)
class DramConfig:
    latency_ns: float = F(90.0, 10.0, 10000.0, "idle load-to-use latency of local DRAM "
                          "(80-110 ns, MICRO'23 'Demystifying CXL memory')")
    channels: int = F(1, 1, 64, "controllers / channels, interleaved")
    interleave_bytes: int = F(4096, 64, 1 << 30, "channel interleave granularity")
    bandwidth_gbps: float = F(25.6, 0.1, 10000.0, "GB/s per channel, reads and writes share it "
                              "(DDR4-3200: 25.6)")
    write_bandwidth_gbps: float = F(25.6, 0.1, 10000.0, "GB/s per channel for writes "
                                    "(lower to model write turnaround)")


@dataclass(frozen=True)
class CxlConfig:
    device_latency_ns: float = F(110.0, 1.0, 10000.0, "CXL controller + media part of the load "
                                 "latency; with the link: 2.2x local DRAM for an ASIC (MICRO'23)")
    link_latency_ns: float = F(88.0, 0.0, 10000.0, "root port + link round trip (flit packing, "
                               "CXL-DMSim)")
    switch_hops: int = F(0, 0, 8, "CXL switches between host and device")
    switch_latency_ns: float = F(70.0, 0.0, 10000.0, "added per switch hop (50-120 ns)")
    devices: int = F(1, 1, 64, "CXL memory devices, interleaved")
    interleave_bytes: int = F(4096, 64, 1 << 30, "device interleave granularity")
    link_bandwidth_gbps: float = F(31.5, 0.1, 10000.0, "GB/s per direction: PCIe 5 x8 "
                                   "(x16: 63)")
    read_bandwidth_gbps: float = F(20.0, 0.1, 10000.0, "device read bandwidth, GB/s (ASIC with "
                                   "one DDR channel behind it, MICRO'23: ~20)")
    write_bandwidth_gbps: float = F(16.0, 0.1, 10000.0, "device write bandwidth, GB/s (writes are "
                                    "slower than reads on measured devices)")


@dataclass(frozen=True)
class MemoryConfig:
    default_tier: str = F("dram", doc="tier of RAM outside 'ranges'", choices=("dram", "cxl",
                                                                              "interleave"))
    interleave_weights: tuple[int, int] = F((1, 1), 1, 64, "default_tier = 'interleave': pages "
                                            "per DRAM : CXL (Linux weighted interleave)")
    interleave_bytes: int = F(4096, 64, 1 << 30, "default_tier = 'interleave': granularity")
    ranges: tuple[tuple[int, int, str], ...] = F((), doc="[[memory.ranges]] start, size, tier: "
                                                  "physical ranges pinned to a tier (e.g. NUMA "
                                                  "node 1 = CXL)")


TRACKERS = ("oracle", "space-saving", "count-min", "sample")


@dataclass(frozen=True)
class ChmuConfig:
    """The CXL Hotness Monitoring Unit (CXL 3.2, 8.2.8.x): one per CXL memory device."""

    enabled: bool = F(False, doc="count what reaches each CXL memory device (LLC misses and "
                      "writebacks) in a hotness monitoring unit; --chmu turns it on")
    tracker: str = F("space-saving", doc="'+'-separated trackers of oracle, space-saving, "
                     "count-min, sample: the first fills the device's hot list, every one is "
                     "measured against the oracle")
    unit_bytes: int = F(4096, 256, 1 << 30, "unit size, 256 B x 2^N (the capability's Unit "
                        "Size); 4 KiB is a base page")
    epoch_us: float = F(1000.0, 100.0, 100_000_000.0, "epoch length in simulated time (the "
                        "capability's epoch range: 100 us .. 100 s)")
    threshold: int = F(1, 1, (1 << 32) - 1, "hotness threshold: a unit with at least this "
                       "count in an epoch may enter the hot list")
    hot_list: int = F(1024, 1, 1 << 16, "hot-list capacity: units reported per epoch, "
                      "hottest first")
    counters: int = F(1024, 1, 1 << 20, "space-saving counters: the device's counter budget")
    counter_bits: int = F(16, 1, 32, "counter width; counts saturate")
    access: str = F("rw", doc="what is counted: r (reads: LLC misses), w (writebacks), rw",
                    choices=("r", "w", "rw"))
    range_base: int = F(0, 0, 1 << 50, "range filter: first byte counted, from the device's "
                        "start; a multiple of 256 MiB")
    range_size: int = F(0, 0, 1 << 50, "range filter: bytes counted, a multiple of 256 MiB; "
                        "0 counts the whole device")
    mode: str = F("epoch", doc="epoch: counters restart every epoch; always-on: they "
                  "accumulate, and a hot list is still drawn at every epoch end",
                  choices=("epoch", "always-on"))
    downsample: int = F(1, 1, 1 << 16, "the trackers count every N-th access (the spec's "
                        "down-sampling factor); the oracle counts all")
    cm_depth: int = F(4, 1, 16, "count-min sketch rows")
    cm_width: int = F(4096, 16, 1 << 24, "count-min counters per row (power of two)")
    sample_every: int = F(64, 1, 1 << 30, "sample tracker: every N-th access")
    sample_period_ns: float = F(0.0, 0.0, 1e9, "sample tracker: the first access after each "
                                "period of simulated time instead (0: use sample_every)")
    sample_buffer: int = F(1 << 16, 1, 1 << 24, "samples kept per epoch (more are counted as "
                           "dropped)")
    report_epochs: int = F(8, 1, 1 << 16, "epochs whose hot lists the JSON keeps (the last)")
    sample_file: str = F("", doc="sample tracker: write every sample here as CSV (epoch, "
                         "time_ns, address, type), as a sampling host daemon reads them; "
                         "empty: counts only")


@dataclass(frozen=True)
class Config:
    core: CoreConfig = field(default_factory=CoreConfig)
    l1i: CacheConfig = field(default_factory=CacheConfig)
    l1d: CacheConfig = field(default_factory=CacheConfig)
    l2: CacheConfig = field(default_factory=lambda: CacheConfig(1024, 16, 14, "lru"))
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    llc: LlcConfig = field(default_factory=LlcConfig)
    coherence: CoherenceConfig = field(default_factory=CoherenceConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    cxl: CxlConfig = field(default_factory=CxlConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    chmu: ChmuConfig = field(default_factory=ChmuConfig)

    # ---- derived figures (cycles) ---------------------------------------
    def ns_to_cycles(self, ns: float) -> float:
        return ns * self.core.frequency_ghz

    @property
    def cxl_latency_ns(self) -> float:
        """Idle load-to-use latency of CXL memory."""
        c = self.cxl
        return c.device_latency_ns + c.link_latency_ns + c.switch_hops * c.switch_latency_ns

    def line_transfer_cycles(self, gbps: float) -> float:
        """Cycles one line occupies a channel or link at ``gbps`` GB/s."""
        return self.ns_to_cycles(self.llc.line_bytes / gbps)

    @property
    def cxl_read_gbps(self) -> float:
        return min(self.cxl.link_bandwidth_gbps, self.cxl.read_bandwidth_gbps)

    @property
    def cxl_write_gbps(self) -> float:
        return min(self.cxl.link_bandwidth_gbps, self.cxl.write_bandwidth_gbps)

    def load_latencies(self) -> dict[str, float]:
        """Idle load-to-use cycles of a load served by each level."""
        return {"l1": self.l1d.latency, "l2": self.l2.latency, "llc": self.llc.latency,
                "dram": self.ns_to_cycles(self.dram.latency_ns),
                "cxl": self.ns_to_cycles(self.cxl_latency_ns)}

    def digest(self) -> str:
        """Short hash of the effective configuration (recorded with results)."""
        blob = json.dumps(to_plain(self), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


SECTIONS = tuple(f.name for f in fields(Config))

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dram-only": {},
    "cxl-direct": {"memory": {"default_tier": "cxl"}},
    "cxl-switch": {"memory": {"default_tier": "cxl"}, "cxl": {"switch_hops": 1}},
    "interleave": {"memory": {"default_tier": "interleave"}},
}
PRESET_DOCS = {
    "dram-only": "all RAM is local DRAM",
    "cxl-direct": "all RAM is a directly attached CXL type-3 expander",
    "cxl-switch": "all RAM is CXL memory behind one switch",
    "interleave": "4 KiB pages alternate between DRAM and CXL (1:1)",
}


def to_plain(cfg: Config) -> dict[str, dict[str, Any]]:
    """The configuration as nested plain values (TOML / JSON ready)."""
    out: dict[str, dict[str, Any]] = {}
    for sec in SECTIONS:
        part = getattr(cfg, sec)
        vals: dict[str, Any] = {}
        for f in fields(part):
            v = getattr(part, f.name)
            if f.name == "ranges":
                v = [{"start": s, "size": z, "tier": t} for s, z, t in v]
            elif isinstance(v, tuple):
                v = list(v)
            vals[f.name] = v
        out[sec] = vals
    return out


def _bad(where: str, value: Any, accepted: str) -> CosimError:
    return CosimError(f"config {where} = {value!r}: {accepted}")


def _check_value(where: str, f: Any, value: Any) -> Any:
    """Validate one field value against its type and range; returns it normalised."""
    meta = f.metadata
    default = f.default
    lo, hi, choices = meta["lo"], meta["hi"], meta["choices"]
    if f.name == "ranges":
        return _check_ranges(where, value)
    if f.name == "tracker":
        names = value.split("+") if isinstance(value, str) else []
        if not names or any(n not in TRACKERS for n in names) or len(set(names)) != len(names):
            raise _bad(where, value, f"must be one or more of {', '.join(TRACKERS)}, "
                       "joined by '+'")
        return value
    if isinstance(default, str) and not choices:
        if not isinstance(value, str):
            raise _bad(where, value, "must be a string")
        return value
    if choices:
        if value not in choices:
            raise _bad(where, value, f"must be one of {', '.join(choices)}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _bad(where, value, "must be true or false")
        return value
    if isinstance(default, tuple):
        if (not isinstance(value, list | tuple) or len(value) != len(default)
                or not all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
                           for x in value)):
            raise _bad(where, value, f"must be a list of {len(default)} integers in {lo}..{hi}")
        return tuple(value)
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _bad(where, value, f"must be an integer in {lo}..{hi}")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(where, value, f"must be a number in {lo}..{hi}")
    return float(value)


ADDR_LIMIT = 1 << 63


def _check_ranges(where: str, value: Any) -> tuple[tuple[int, int, str], ...]:
    if not isinstance(value, list):
        raise _bad(where, value, "must be a list of {start, size, tier} tables")
    out = []
    for i, r in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(r, dict) or set(r) != {"start", "size", "tier"}:
            raise _bad(w, r, "must be a table with exactly start, size, tier")
        if not isinstance(r["start"], int) or isinstance(r["start"], bool) or r["start"] < 0:
            raise _bad(f"{w}.start", r["start"], "must be an integer >= 0")
        if not isinstance(r["size"], int) or isinstance(r["size"], bool) or r["size"] <= 0:
            raise _bad(f"{w}.size", r["size"], "must be an integer > 0")
        if r["tier"] not in ("dram", "cxl"):
            raise _bad(f"{w}.tier", r["tier"], "must be dram or cxl")
        if r["start"] + r["size"] > ADDR_LIMIT:
            # the kernels hold addresses in int64
            raise _bad(f"{w}.size", r["size"], f"start + size must be at most 2^63 "
                       f"(a physical address range; start is {r['start']:#x})")
        out.append((r["start"], r["size"], r["tier"]))
    return tuple(out)


def _apply(cfg: Config, overrides: dict[str, Any], origin: str) -> Config:
    """Return ``cfg`` with ``overrides`` (nested tables) applied and checked."""
    for sec, table in overrides.items():
        if sec not in SECTIONS:
            raise CosimError(f"{origin}: unknown section [{sec}]; sections: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise CosimError(f"{origin}: [{sec}] must be a table")
        part = getattr(cfg, sec)
        known = {f.name: f for f in fields(part)}
        changes = {}
        for key, value in table.items():
            if key not in known:
                raise CosimError(f"{origin}: unknown field {sec}.{key}; "
                                 f"{sec} has {', '.join(known)}")
            changes[key] = _check_value(f"{sec}.{key}", known[key], value)
        cfg = replace(cfg, **{sec: replace(part, **changes)})
    return cfg


def _check_shape(cfg: Config) -> None:
    """Relations between fields (power-of-two geometry, latencies that add up)."""
    line = cfg.llc.line_bytes
    if line & (line - 1):
        raise _bad("llc.line_bytes", line, "must be a power of two in 32..256")
    if cfg.llc.slices & (cfg.llc.slices - 1):
        raise _bad("llc.slices", cfg.llc.slices, "must be a power of two in 1..64")
    for name in ("l1i", "l1d", "l2", "llc"):
        c = getattr(cfg, name)
        per = c.size_kib * 1024 // (cfg.llc.slices if name == "llc" else 1)
        sets = per // (c.ways * line)
        if sets < 1 or sets * c.ways * line != per or sets & (sets - 1):
            raise _bad(f"{name}.size_kib", c.size_kib,
                       f"must give a power-of-two number of sets of {c.ways} ways x {line} B"
                       + (f" in each of {cfg.llc.slices} slices" if name == "llc" else ""))
    floor = cfg.llc.latency + cfg.line_transfer_cycles(cfg.dram.bandwidth_gbps)
    if cfg.ns_to_cycles(cfg.dram.latency_ns) <= floor:
        raise _bad("dram.latency_ns", cfg.dram.latency_ns,
                   f"must exceed the LLC latency plus a line transfer ({floor:.1f} cycles)")
    floor = cfg.llc.latency + cfg.line_transfer_cycles(cfg.cxl_read_gbps)
    if cfg.ns_to_cycles(cfg.cxl_latency_ns) <= floor:
        raise _bad("cxl.device_latency_ns", cfg.cxl.device_latency_ns,
                   f"CXL latency must exceed the LLC latency plus a line transfer "
                   f"({floor:.1f} cycles)")
    _check_chmu(cfg)


def _check_chmu(cfg: Config) -> None:
    c = cfg.chmu
    if c.unit_bytes & (c.unit_bytes - 1):
        raise _bad("chmu.unit_bytes", c.unit_bytes, "must be a power of two, 256 B x 2^N "
                   "(256 .. 1 GiB)")
    if c.cm_width & (c.cm_width - 1):
        raise _bad("chmu.cm_width", c.cm_width, "must be a power of two in 16..16777216")
    for name in ("range_base", "range_size"):
        v = getattr(c, name)
        if v % (256 << 20):
            raise _bad(f"chmu.{name}", v, "must be a multiple of 256 MiB (268435456)")


def load(preset: str | None = None, path: Path | None = None) -> Config:
    """Defaults, then the preset, then the file's fields."""
    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            raise CosimError(f"--preset {preset!r}: unknown; presets: {', '.join(PRESETS)}")
        cfg = _apply(cfg, PRESETS[preset], f"preset {preset}")
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CosimError(f"--config {path}: no such file") from None
        except IsADirectoryError:
            raise CosimError(f"--config {path}: is a directory; give a TOML file "
                             "(see `cosim config show`)") from None
        except PermissionError:
            raise CosimError(f"--config {path}: permission denied") from None
        except UnicodeDecodeError as e:
            raise CosimError(f"--config {path}: not UTF-8 text (byte {e.start}); "
                             "a TOML file is UTF-8") from None
        except tomllib.TOMLDecodeError as e:
            raise CosimError(f"--config {path}: not valid TOML: {e}") from None
        cfg = _apply(cfg, data, str(path))
    _check_shape(cfg)
    return cfg


def with_overrides(preset: str | None, overrides: dict[str, Any], origin: str) -> Config:
    """Defaults, the preset, then ``overrides`` (nested tables, as a ``--config`` file holds
    them), checked as ``load`` checks a file; errors start with ``origin`` (a sweep's point)."""
    cfg = _apply(load(preset), overrides, origin)
    try:
        _check_shape(cfg)
    except CosimError as e:
        raise CosimError(f"{origin}: {e}") from None
    return cfg


def show(cfg: Config, title: str) -> str:
    """The configuration as commented TOML (what ``cosim config show`` prints)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(title))
    lat = ", ".join(f"{k} {v:.1f}" for k, v in cfg.load_latencies().items())
    doc.add(tomlkit.comment(f"idle load-to-use cycles: {lat}"))
    doc.add(tomlkit.nl())
    plain = to_plain(cfg)
    for sec in SECTIONS:
        table = tomlkit.table()
        part = getattr(cfg, sec)
        for f in fields(part):
            value = plain[sec][f.name]
            if f.name == "ranges":
                table.add(tomlkit.comment(f.metadata["doc"]))
                if value:
                    arr = tomlkit.aot()
                    for r in value:
                        arr.append(tomlkit.item(r))
                    table.add(f.name, arr)
            else:
                item = tomlkit.item(value)
                item.comment(f.metadata["doc"])
                table.add(f.name, item)
        doc.add(sec, table)
    return tomlkit.dumps(doc)
