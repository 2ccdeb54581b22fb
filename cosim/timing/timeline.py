"""Memory traffic per interval of simulated time: the CXL share over a run, and where it went.

A tiering policy shows itself over time: the share of reads served by CXL
memory falls as hot pages are promoted. The model's counters are totals,
so ``Timeline`` reads them at every interval boundary simulated time
passes (at report boundaries, after the model fed a report) and keeps the
differences: per interval, DRAM and CXL reads and writes, and the line
transfers to and from memory per address bin (the page-hotness heatmap).

It only reads the model's counters, so cycle counts are the same with or
without it. Intervals start at ``interval_ns``; when a run outlasts
``MAX_INTERVALS`` of them, neighbours are merged and the interval doubles,
so that a long run keeps its whole timeline at a coarser grain.
"""

from __future__ import annotations

import numpy as np

from . import memory
from .memory import TICKS_PER_CYCLE
from .state import Model

#: intervals kept before neighbours are merged
MAX_INTERVALS = 512
#: address bins of the heatmap, over all RAM ranges
BINS = 128


class Timeline:
    """Per-interval traffic of one run (see module docstring)."""

    def __init__(self, model: Model, interval_ns: int, start_ticks: int) -> None:
        self.model = model
        self.ticks_per_ns = model.cfg.core.frequency_ghz * TICKS_PER_CYCLE
        self.interval_ns = interval_ns
        self.start = start_ticks
        self.next_end = start_ticks + self._ticks(interval_ns)
        Mm = model.H.Mm
        # bin of every page: pages of all RAM ranges in order, cut into BINS equal parts
        self.npages = int(sum((end - start) >> memory.PAGE_SHIFT for start, end, _ in Mm.ram))
        self.bins = min(BINS, max(1, self.npages))
        self.edges = (np.arange(self.bins) * self.npages) // self.bins
        self.last_tiers = self._tiers()
        self.last_bins = self._bins()
        self.tiers: list[list[int]] = []    # per interval: dram r, dram w, cxl r, cxl w
        self.heat: list[np.ndarray] = []    # per interval: lines per address bin

    def _ticks(self, ns: int) -> int:
        return int(round(ns * self.ticks_per_ns))

    def _tiers(self) -> np.ndarray:
        ts = self.model.H.Mm.tier_stats
        return np.array([ts[0, memory.TS_READS], ts[0, memory.TS_WRITES],
                         ts[1, memory.TS_READS], ts[1, memory.TS_WRITES]], dtype=np.int64)

    def _bins(self) -> np.ndarray:
        lines = self.model.H.Mm.pages[:self.npages].sum(axis=1)
        return np.add.reduceat(lines, self.edges) if self.npages else np.zeros(1, np.int64)

    def sample(self, now_ticks: int) -> None:
        """Close the intervals that end at or before ``now_ticks``.

        Traffic of a report that spans several boundaries goes to the first
        interval it closes (the model's counters are read between reports).
        """
        if now_ticks < self.next_end:
            return
        tiers, bins = self._tiers(), self._bins()
        self.tiers.append((tiers - self.last_tiers).tolist())
        self.heat.append(bins - self.last_bins)
        self.last_tiers, self.last_bins = tiers, bins
        step = self._ticks(self.interval_ns)
        self.next_end += step
        while self.next_end <= now_ticks:
            # intervals the report passed without a boundary of its own: empty
            self.tiers.append([0, 0, 0, 0])
            self.heat.append(np.zeros_like(bins))
            self.next_end += step
        if len(self.tiers) > MAX_INTERVALS and len(self.tiers) % 2 == 0:
            self._coarsen()

    def _coarsen(self) -> None:
        """Merge neighbouring intervals (an even number of them), doubling the interval: the
        next boundary stays where it was, now the end of a doubled interval."""
        t = np.array(self.tiers, dtype=np.int64)
        self.tiers = (t[0::2] + t[1::2]).tolist()
        h = np.array(self.heat)
        self.heat = list(h[0::2] + h[1::2])
        self.interval_ns *= 2

    def document(self) -> dict:
        """Intervals, per-tier traffic and the heatmap, for the run's JSON and the plots."""
        Mm = self.model.H.Mm
        # the first guest-physical address of every bin
        firsts = []
        for b in self.edges.tolist():
            for start, end, first in Mm.ram:
                n = (int(end) - int(start)) >> memory.PAGE_SHIFT
                if int(first) <= b < int(first) + n:
                    firsts.append(int(start) + ((b - int(first)) << memory.PAGE_SHIFT))
                    break
        return {
            "interval_ns": self.interval_ns,
            "columns": ["dram_reads", "dram_writes", "cxl_reads", "cxl_writes"],
            "intervals": self.tiers,
            "heatmap": {"bin_addresses": [f"{a:#x}" for a in firsts],
                        "bin_tiers": [memory.TIER_NAMES[memory.tier_of(Mm, a)] for a in firsts],
                        "lines": [h.tolist() for h in self.heat]},
        }
