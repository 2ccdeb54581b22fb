"""CHMU epochs: hot lists drawn in simulated time, and how good each tracker's is.

The kernels (``chmu``) count; this module owns the epochs. An epoch is a
span of simulated time, ``[k E, (k+1) E)`` for the configured length E, so
epochs line up the same way in a straight run and in one continued from a
snapshot. The engine calls ``advance`` after it feeds a report, with the
local time of the core it fed; the epochs that time has passed close
there, at a report boundary, which depends on nothing but the run's
inputs (a report spans at most a few microseconds of simulated time, the
shortest epoch 100).

At an epoch's end every tracker's hot list is drawn (units whose count,
scaled by the down-sampling factor, reaches the threshold, hottest first,
at most ``hot_list``), and each is judged against the oracle's:

- the reference is the oracle's hot list, with the units tied with its
  last entry (units equally hot cannot be told apart by any tracker);
- precision = share of the tracker's list in the reference; recall = share
  of the reference the list found, out of what a list of that capacity
  could hold; coverage = share of the epoch's device accesses that fall on
  the list's units (the oracle's own coverage is the best possible).

Epochs with no device access are counted but not judged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..errors import CosimError
from . import chmu
from .chmu import ChmuArrays
from .config import ChmuConfig, Config
from .memory import TICKS_PER_CYCLE as TICKS

HEAT_ROWS = 64              # address bins per instance in the heatmap
HEAT_EPOCHS = 256           # epochs the heatmap keeps (the last)
SERIES_EPOCHS = 1 << 14     # epochs whose device accesses and reads are kept (the last)
#: the largest unit the guest may choose (the range filter's granularity); the
#: smallest is the configured one, for which the counters are allocated
MAX_GUEST_UNIT = 256 << 20
MAX_UNITS = 1 << 25         # oracle counters over all instances (with slot_of and touched: 768 MiB)
_BITS = {"space-saving": chmu.TR_SPACE_SAVING, "count-min": chmu.TR_COUNT_MIN,
         "sample": chmu.TR_SAMPLE}


def instances(cfg: Config, ram: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) of each CXL memory device the model serves: a CHMU each.

    The ranges pinned to the CXL tier (the CPU-less CXL node, a cxl-type3
    window), clipped to RAM; without any, every RAM range when the default
    tier can be CXL (the cxl-direct, cxl-switch and interleave presets).
    """
    out = []
    for start, size, tier in cfg.memory.ranges:
        if tier != "cxl":
            continue
        for r_start, r_size in ram:
            lo, hi = max(start, r_start), min(start + size, r_start + r_size)
            if lo < hi:
                out.append((lo, hi))
    if not out and cfg.memory.default_tier != "dram":
        out = [(s, s + z) for s, z in ram]
    return sorted(out)


def allocate(cfg: Config, ram: list[tuple[int, int]]) -> tuple[ChmuArrays, list[tuple[int, int]]]:
    """The CHMU arrays (a token arena when it is off) and the ranges each instance counts."""
    c = cfg.chmu
    p = np.zeros(chmu.NCPARAMS, dtype=np.int64)
    if not c.enabled:
        return _arrays(p, np.zeros((0, chmu.NICOLS), dtype=np.int64), 1, 1, 0, 1, 1, 1, 1), []
    devices = instances(cfg, ram)
    if not devices:
        raise CosimError("--chmu: this machine has no CXL memory to monitor (a CHMU counts a "
                         "CXL device's traffic); use a board with a CXL node or a cxl-* preset")
    shift = c.unit_bytes.bit_length() - 1
    rows, counted, first = [], [], 0
    for lo, hi in devices:
        lo = lo + c.range_base
        if c.range_size:
            hi = min(hi, lo + c.range_size)
        if lo >= hi:
            continue
        rows.append((lo, hi, first))
        counted.append((lo, hi))
        first += (hi - lo + c.unit_bytes - 1) >> shift
    if not rows:
        raise CosimError(f"--chmu range={c.range_base}+{c.range_size}: the range filter leaves "
                         f"no CXL memory (devices: "
                         + ", ".join(f"{lo:#x}..{hi:#x}" for lo, hi in devices) + ")")
    if first > MAX_UNITS:
        raise CosimError(f"--chmu unit={c.unit_bytes}: the CXL memory would need {first:,} "
                         f"counters (at most {MAX_UNITS:,}); use a larger unit or a range filter")
    p[chmu.CP_ON] = 1
    p[chmu.CP_UNIT_SHIFT] = shift
    p[chmu.CP_ACCESS] = {"r": chmu.ACC_READ, "w": chmu.ACC_WRITE,
                         "rw": chmu.ACC_READ | chmu.ACC_WRITE}[c.access]
    p[chmu.CP_DOWNSAMPLE] = c.downsample
    p[chmu.CP_CNT_MAX] = (1 << c.counter_bits) - 1
    p[chmu.CP_TRACKERS] = sum(_BITS.get(t, 0) for t in c.tracker.split("+"))
    p[chmu.CP_SAMPLE_EVERY] = c.sample_every
    p[chmu.CP_SAMPLE_PERIOD] = round(c.sample_period_ns * cfg.core.frequency_ghz * TICKS)
    trackers = p[chmu.CP_TRACKERS]
    ss, cm = trackers & chmu.TR_SPACE_SAVING, trackers & chmu.TR_COUNT_MIN
    C = _arrays(p, np.array(rows, dtype=np.int64).reshape(-1, chmu.NICOLS), first,
                c.counters if ss else 1, int(p[chmu.CP_CNT_MAX]) if ss else 0,
                c.cm_depth if cm else 1, c.cm_width if cm else 1, c.hot_list if cm else 1,
                c.sample_buffer if trackers & chmu.TR_SAMPLE else 1)
    return C, counted


def _arrays(p: np.ndarray, inst: np.ndarray, units: int, k: int, ss_cmax: int, depth: int,
            width: int, cm_k: int, samples: int) -> ChmuArrays:
    p = chmu.layout(p, inst, units, k, ss_cmax, depth, width, cm_k, samples)
    C = chmu.views(p, np.zeros(int(p[chmu.ARENA_LEN]), dtype=np.int64))
    clear(C)
    return C


def reset_sampling(C: ChmuArrays) -> None:
    """Down-sampling and sampling count from the start (the first access is taken)."""
    C.s[chmu.S_DOWN] = 1
    C.s[chmu.S_SAMPLE_LEFT] = 1


def clear(C: ChmuArrays) -> None:
    """Every count of every instance back to zero (a new unit, or a restore that does not fit)."""
    C.arena[...] = 0
    C.s[chmu.S_LAYOUT] = chmu.ARENA_LAYOUT
    chmu.clear_space_saving(C.ss)
    chmu.clear_topk(C.cmk)
    reset_sampling(C)


class SampleBatch(NamedTuple):
    """The sample tracker's samples of one epoch, as a sampling host daemon gets them."""

    epoch: int
    end_cycles: int         # when the epoch ended (simulated cycles)
    time_ns: list[int]      # per sample: when (simulated ns)
    address: list[int]      # the sampled unit's host physical address
    types: str              # per sample: "r" or "w"
    dropped: int            # samples the buffer had no room for this epoch


@dataclass
class Score:
    """A tracker's accuracy summed over the judged epochs."""

    epochs: int = 0
    precision: float = 0.0
    recall: float = 0.0
    coverage: float = 0.0

    def add(self, p: float, r: float, c: float) -> None:
        self.epochs += 1
        self.precision += p
        self.recall += r
        self.coverage += c

    def mean(self) -> dict:
        n = self.epochs
        return {"epochs": n, "precision": round(self.precision / n, 4) if n else None,
                "recall": round(self.recall / n, 4) if n else None,
                "coverage": round(self.coverage / n, 4) if n else None}


@dataclass
class Monitor:
    """The epochs of every CHMU instance of one run."""

    cfg: ChmuConfig
    C: ChmuArrays
    ranges: list[tuple[int, int]]           # what each instance counts
    ticks_per_us: float
    epoch_ticks: int
    next_end: int = -1                      # ticks; -1: set at the first advance
    epoch: int = 0                          # epochs closed
    history: deque = field(default_factory=deque)
    scores: dict = field(default_factory=dict)      # (instance, tracker) -> Score
    heat: deque = field(default_factory=deque)      # per epoch: int64[ninst, HEAT_ROWS]
    timeline: deque = field(default_factory=deque)  # per epoch: {tracker: [p, r, coverage]}
    series: deque = field(default_factory=deque)    # per epoch: [end cycles, accesses, reads]
    samples_taken: int = 0
    samples_dropped: int = 0
    #: hot lists for the guest-visible device (``chmu_device``), each with the
    #: number of already decided commands to let pass before it is delivered
    outbox: list = field(default_factory=list)
    publish: bool = False           # a device takes the outbox
    threshold: int = 1              # the device's: configured, then as the guest sets it
    staged: list = field(default_factory=list)      # CFG1, CFG2 at the last two commands
    device: Any = None              # the guest-visible registers (chmu_device.Device), if any
    unit_bytes: int = 0             # the unit counted now: configured, then as the guest sets it
    #: called with each epoch's SampleBatch (the control plane's sample stream)
    listeners: list = field(default_factory=list)

    def before_command(self) -> None:
        """A command is about to be sent, every vCPU stopped: the device's moment."""
        if self.device is not None:
            self.device.deliver()

    @classmethod
    def create(cls, cfg: Config, C: ChmuArrays, ranges: list[tuple[int, int]]) -> "Monitor":
        per_us = 1e3 * cfg.core.frequency_ghz * TICKS
        if cfg.chmu.sample_file:
            # written now, so a path that cannot be written fails before the run
            try:
                with open(cfg.chmu.sample_file, "w", encoding="ascii") as f:
                    f.write("epoch,time_ns,address,type\n")
            except OSError as e:
                raise CosimError(f"--chmu samples={cfg.chmu.sample_file}: cannot write: "
                                 f"{e.strerror}") from None
        return cls(cfg.chmu, C, ranges, per_us, round(cfg.chmu.epoch_us * per_us),
                   threshold=cfg.chmu.threshold, unit_bytes=cfg.chmu.unit_bytes)

    @property
    def trackers(self) -> list[str]:
        return self.cfg.tracker.split("+")

    def advance(self, now: int, deferred: bool = False, in_flight: bool = False) -> None:
        """Close every epoch that simulated time ``now`` (ticks) has passed.

        ``deferred``: a command decided before this report was fed has not
        been sent yet; the device gets these hot lists with the one after it.
        ``in_flight``: that command was sent already, so the guest's settings
        read at its start are newer than this report; those read when the
        report's own command started are the ones adopted (the same either way).
        """
        if self.next_end < 0:
            self.next_end = (now // self.epoch_ticks + 1) * self.epoch_ticks
        while now >= self.next_end:
            self._close(1 if deferred else 0)
            self._adopt(self.staged[-2] if in_flight and len(self.staged) > 1
                        else self.staged[-1] if self.staged else None)
            self.next_end += self.epoch_ticks

    def stage(self, raw: tuple[int, int]) -> None:
        """The device's configuration registers as a command starts (the last two kept)."""
        if len(self.staged) > 1:
            self.staged[0] = self.staged[1]
            self.staged[1] = raw
        else:
            self.staged.append(raw)

    def _adopt(self, raw: tuple[int, int] | None) -> None:
        """The guest's settings take effect for the epoch that starts now."""
        if raw is None or self.device is None:
            return
        st = self.device.settings(tuple(raw))
        self.threshold = st["threshold"]
        us = st["epoch_us"]
        if us is not None and 100 <= us <= 100_000_000:
            self.epoch_ticks = round(us * self.ticks_per_us)
        if st["unit"] != self.unit_bytes and st["unit"] in guest_units(self.cfg):
            self.unit_bytes = st["unit"]
            self._apply_unit()
            clear(self.C)       # counts of the old unit mean nothing in the new one

    def _apply_unit(self) -> None:
        """The kernels count in ``unit_bytes`` units: the shift, and each instance's first
        counter (the counters, allocated for the configured unit, hold as many or more)."""
        shift = self.unit_bytes.bit_length() - 1
        self.C.p[chmu.CP_UNIT_SHIFT] = shift
        first = 0
        for i, (lo, hi) in enumerate(self.ranges):
            self.C.inst[i, chmu.I_FIRST] = first
            first += (hi - lo + self.unit_bytes - 1) >> shift

    # -- an epoch's end -------------------------------------------------------

    def _close(self, skip: int) -> None:
        C, c = self.C, self.cfg
        threshold = self.threshold
        n = int(C.s[chmu.S_NTOUCHED])
        touched = C.touched[:n]
        record: dict = {"epoch": self.epoch, "end_cycles": self.next_end // TICKS,
                        "instances": []}
        heat = np.zeros((len(self.ranges), HEAT_ROWS), dtype=np.int64)
        judged: dict[str, list[float]] = {}
        post: dict = {"epoch": self.epoch, "instances": []}
        unit = self.unit_bytes
        shift = unit.bit_length() - 1
        for i, (lo, hi) in enumerate(self.ranges):
            first = int(C.inst[i, chmu.I_FIRST])
            units = (hi - lo + unit - 1) >> shift
            mine = touched[(touched >= first) & (touched < first + units)]
            counts = C.oracle[mine]
            local = mine - first
            seen = int(C.seen[i, chmu.SEEN_ORACLE])
            heat[i] = np.bincount(local * HEAT_ROWS // units, weights=counts,
                                  minlength=HEAT_ROWS).astype(np.int64)
            lists = {"oracle": _hot(local, counts, threshold, c.hot_list)}
            for name in self.trackers:
                if name != "oracle":
                    lists[name] = _hot(*self._estimates(name, i, first, units), threshold,
                                       c.hot_list)
            device_units, device_counts = lists[self.trackers[0]]
            if self.publish:
                # the unit's index within its device (the range filter may start further in)
                post["instances"].append({"instance": i, "unit_bytes": unit, "hot_units": np.stack(
                    [device_units + (c.range_base >> shift), device_counts], 1).tolist()})
            inst: dict = {"instance": i, "accesses": int(C.seen[i, chmu.SEEN_EPOCH]),
                          "reads": int(C.seen[i, chmu.SEEN_EPOCH_READS]),
                          "hot_list": (lo + (device_units << shift)).tolist()}
            if seen:
                ref = _reference(local, counts, lists["oracle"])
                for name, (units_t, _) in lists.items():
                    p, r, cov = _judge(units_t, ref, C.oracle[first + units_t], seen, c.hot_list)
                    self.scores.setdefault((i, name), Score()).add(p, r, cov)
                    judged[self._key(i, name)] = [round(p, 4), round(r, 4), round(cov, 4)]
                    inst.setdefault("accuracy", {})[name] = {
                        "precision": round(p, 4), "recall": round(r, 4),
                        "coverage": round(cov, 4), "listed": len(units_t)}
            record["instances"].append(inst)
        self.series.append([self.next_end // TICKS, int(C.seen[:, chmu.SEEN_EPOCH].sum()),
                            int(C.seen[:, chmu.SEEN_EPOCH_READS].sum())])
        while len(self.series) > SERIES_EPOCHS:
            self.series.popleft()
        C.seen[:, chmu.SEEN_EPOCH:] = 0
        self.heat.append(heat)
        self.timeline.append(judged)
        while len(self.heat) > HEAT_EPOCHS:
            self.heat.popleft()
            self.timeline.popleft()
        if self.publish:
            self.outbox.append((skip, post))
        self.history.append(record)
        while len(self.history) > c.report_epochs:
            self.history.popleft()
        if c.sample_file or self.listeners:
            batch = self._sample_batch()
            if c.sample_file:
                self._write_samples(batch)
            for listen in self.listeners:
                listen(batch)
        self.samples_taken += int(C.s[chmu.S_NSAMPLES])
        self.samples_dropped += int(C.s[chmu.S_DROPPED])
        C.s[chmu.S_NSAMPLES] = 0
        C.s[chmu.S_DROPPED] = 0
        if c.mode == "epoch":
            C.oracle[touched] = 0
            C.s[chmu.S_NTOUCHED] = 0
            C.seen[...] = 0
            chmu.clear_space_saving(C.ss)
            chmu.clear_topk(C.cmk)
            C.cm[...] = 0
        self.epoch += 1

    def _sample_batch(self) -> "SampleBatch":
        """This epoch's samples: when (ns), which unit (host physical address), read or write."""
        C = self.C
        n = int(C.s[chmu.S_NSAMPLES])
        g, write = C.samples[:n] >> 1, C.samples[:n] & 1
        shift = self.unit_bytes.bit_length() - 1
        addr = np.zeros(n, dtype=np.int64)
        for i, (lo, _) in enumerate(self.ranges):
            first = int(C.inst[i, chmu.I_FIRST])
            mine = g >= first
            addr[mine] = lo + ((g[mine] - first) << shift)
        ns = (C.sample_t[:n] / self.ticks_per_us * 1e3).astype(np.int64)
        return SampleBatch(self.epoch, self.next_end // TICKS, ns.tolist(), addr.tolist(),
                           "".join("w" if w else "r" for w in write.tolist()),
                           int(C.s[chmu.S_DROPPED]))

    def _write_samples(self, batch: "SampleBatch") -> None:
        """Append an epoch's samples to ``sample_file``: epoch, time (ns), unit address, r/w."""
        c = self.cfg
        try:
            with open(c.sample_file, "a", encoding="ascii") as f:
                f.writelines(f"{batch.epoch},{t},{a:#x},{w}\n"
                             for t, a, w in zip(batch.time_ns, batch.address, batch.types))
        except OSError as e:
            raise CosimError(f"--chmu samples={c.sample_file}: cannot write: {e.strerror}") from None

    def _estimates(self, name: str, i: int, first: int, units: int) -> tuple[np.ndarray, np.ndarray]:
        """(units, estimated accesses) of one tracker in instance ``i`` this epoch."""
        C, c = self.C, self.cfg
        if name == "space-saving":
            held = C.ss.unit[i] >= 0
            return C.ss.unit[i][held], C.ss.cnt[i][held] * c.downsample
        if name == "count-min":
            k = int(C.cmk.size[i])
            return C.cmk.unit[i, :k].copy(), C.cmk.cnt[i, :k] * c.downsample
        n = int(C.s[chmu.S_NSAMPLES])
        g = C.samples[:n] >> 1
        g = g[(g >= first) & (g < first + units)]
        u, cnt = np.unique(g - first, return_counts=True)
        tracked = int(C.seen[i, chmu.SEEN_TRACKED])
        # every N-th access: N accesses per sample; by period: the epoch's share
        per = (c.sample_every if c.sample_period_ns == 0 else tracked / max(n, 1)) * c.downsample
        return u, np.round(cnt * per).astype(np.int64)

    # -- what a run reports -----------------------------------------------------

    def document(self) -> dict:
        """``timing.chmu`` of the JSON: configuration, last hot lists, accuracy, heatmap."""
        c = self.cfg
        return {
            "config": {"tracker": c.tracker, "unit_bytes": c.unit_bytes, "epoch_us": c.epoch_us,
                       "threshold": c.threshold, "device_threshold": self.threshold,
                       "device_epoch_us": round(self.epoch_ticks / self.ticks_per_us, 3),
                       "device_unit_bytes": self.unit_bytes, "hot_list": c.hot_list,
                       "counters": c.counters,
                       "counter_bits": c.counter_bits, "access": c.access, "mode": c.mode,
                       "downsample": c.downsample, "cm_depth": c.cm_depth,
                       "cm_width": c.cm_width, "sample_every": c.sample_every,
                       "sample_period_ns": c.sample_period_ns},
            "instances": [{"instance": i, "start": f"{lo:#x}", "end": f"{hi:#x}"}
                          for i, (lo, hi) in enumerate(self.ranges)],
            "epochs": self.epoch,
            "epoch_cycles": self.epoch_ticks // TICKS,
            "accuracy": {self._key(i, name): s.mean()
                         for (i, name), s in sorted(self.scores.items())},
            "samples": {"taken": self.samples_taken, "dropped": self.samples_dropped},
            "last_epochs": list(self.history),
            # per epoch (the last HEAT_EPOCHS): device accesses per address bin of each
            # instance, and each tracker's [precision, recall, coverage]
            "heatmap": {"rows": HEAT_ROWS, "first_epoch": self.epoch - len(self.heat),
                        "counts": [h.tolist() for h in self.heat]},
            "timeline": list(self.timeline),
            # per epoch (the last SERIES_EPOCHS), all instances: [end cycle, accesses, reads]
            "series": {"first_epoch": self.epoch - len(self.series),
                       "epochs": list(self.series)},
        }

    def _key(self, i: int, name: str) -> str:
        """A tracker's name in the reports (with its instance when there are several)."""
        return name if len(self.ranges) == 1 else f"{i}.{name}"

    def state(self) -> dict:
        """What a snapshot keeps besides the arrays (which ``persist`` saves)."""
        return {"next_end": self.next_end, "epoch": self.epoch, "history": list(self.history),
                "scores": [[i, n, s.epochs, s.precision, s.recall, s.coverage]
                           for (i, n), s in self.scores.items()],
                "heat": [h.tolist() for h in self.heat], "timeline": list(self.timeline),
                "series": list(self.series),
                "samples": [self.samples_taken, self.samples_dropped],
                "outbox": [[k, rec] for k, rec in self.outbox], "threshold": self.threshold,
                "epoch_ticks": self.epoch_ticks, "staged": [list(x) for x in self.staged],
                "unit_bytes": self.unit_bytes}

    def load(self, st: dict) -> None:
        self.next_end, self.epoch = int(st["next_end"]), int(st["epoch"])
        self.history = deque(st["history"])
        self.scores = {(int(i), str(n)): Score(int(e), float(p), float(r), float(c))
                       for i, n, e, p, r, c in st["scores"]}
        self.heat = deque(np.array(h, dtype=np.int64) for h in st["heat"])
        self.timeline = deque(st["timeline"])
        self.series = deque(st["series"])
        self.samples_taken, self.samples_dropped = map(int, st["samples"])
        self.outbox = [(int(k), rec) for k, rec in st["outbox"]]
        self.threshold, self.epoch_ticks = int(st["threshold"]), int(st["epoch_ticks"])
        self.staged = [tuple(x) for x in st["staged"]]
        self.unit_bytes = int(st.get("unit_bytes", self.cfg.unit_bytes))
        self._apply_unit()


def guest_units(c: ChmuConfig) -> list[int]:
    """The units the guest may choose: the configured one and every larger power of two
    up to MAX_GUEST_UNIT (the CHMU capability's supported-unit bitmask)."""
    out, u = [], c.unit_bytes
    while u <= MAX_GUEST_UNIT:
        out.append(u)
        u <<= 1
    return out


def _hot(units: np.ndarray, counts: np.ndarray, threshold: int,
         capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(units, counts) at or above ``threshold``, hottest first (ties: lower unit), at most ``capacity``."""
    keep = counts >= threshold
    if np.count_nonzero(keep) > capacity:
        # only the capacity hottest and those tied with the last of them can be listed:
        # sort those, not all
        keep &= counts >= -np.partition(-counts[keep], capacity - 1)[capacity - 1]
    units, counts = units[keep], counts[keep]
    order = np.lexsort((units, -counts))[:capacity]
    return units[order], counts[order]


def _reference(units: np.ndarray, counts: np.ndarray,
               oracle: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The oracle's hot list and the units tied with its last entry (sorted)."""
    listed, listed_counts = oracle
    if not len(listed):
        return listed
    return np.union1d(listed, units[counts == listed_counts[-1]])


def _judge(listed: np.ndarray, ref: np.ndarray, true_counts: np.ndarray, seen: int,
           capacity: int) -> tuple[float, float, float]:
    """(precision, recall, coverage) of one hot list against the reference.

    ``true_counts``: the oracle's counts of the listed units.
    """
    hits = int(np.isin(listed, ref, assume_unique=True).sum())
    precision = hits / len(listed) if len(listed) else (1.0 if not len(ref) else 0.0)
    recall = hits / min(len(ref), capacity) if len(ref) else 1.0
    return precision, recall, int(true_counts.sum()) / seen
