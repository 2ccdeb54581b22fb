"""Scheduling policy: which vCPU runs how many instructions next.

Two policies drive the bridge:

- ``run_round_robin``: fixed round-robin, every vCPU ``Q`` instructions per
  turn in vCPU order (the default; fast mode batches many turns per round
  trip so the bridge costs little);
- ``step``: caller-directed budgets; the caller (later: the timing model,
  which runs the vCPU with the smallest simulated time) names the vCPU and
  its instruction count.

Both account every report in a ``Schedule``: per-vCPU instruction and turn
counts, turns that ended short (must stay 0: that is the exactness
guarantee), disagreements between QEMU's icount and the plugin's counters,
and the maximum instruction skew between vCPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .libqflex_bridge import Bridge, Report


@dataclass
class Schedule:
    """Running totals of a run, updated from each bridge report."""

    nvcpus: int
    insns: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    halted_turns: list[int] = field(default_factory=list)
    yielded_turns: list[int] = field(default_factory=list)   # ended at a spin-wait hint
    short_turns: int = 0
    count_mismatches: int = 0
    restarted_insns: int = 0    # faulting/restarted instructions the plugin saw twice
    icount_drift: int = 0       # reports where sum(insns) != QEMU icount
    qemu_icount: int = 0        # QEMU's icount at the last turn boundary
    max_skew: int = 0
    last_vcpu: int = -1
    exited: bool = False

    def __post_init__(self) -> None:
        for name in ("insns", "turns", "halted_turns", "yielded_turns"):
            if not getattr(self, name):
                setattr(self, name, [0] * self.nvcpus)

    @property
    def total(self) -> int:
        return sum(self.insns)

    def account(self, report: Report) -> None:
        for v in range(self.nvcpus):
            self.insns[v] += report.insns[v]
            self.turns[v] += report.turn_counts[v]
            self.halted_turns[v] += report.halted_turns[v]
            self.yielded_turns[v] += report.yielded_turns[v]
        self.short_turns += report.short_turns
        self.count_mismatches += report.count_mismatches
        self.restarted_insns += report.restarted
        if report.last is not None:
            self.last_vcpu = report.last.vcpu
            self.qemu_icount = report.last.icount
            if report.last.icount != self.total:
                self.icount_drift += 1
        if report.exited:
            self.exited = True
            if report.partial_vcpu >= 0:
                self.insns[report.partial_vcpu] += report.partial_insns
        # Sampled at every report: every turn in trace mode, every batch of
        # whole rounds in fast mode. A halted vCPU falls behind, so the skew
        # grows while a vCPU sleeps; with all vCPUs busy it stays <= Q.
        self.max_skew = max(self.max_skew, max(self.insns) - min(self.insns))

    def state(self) -> dict:
        """Everything a snapshot needs to continue the totals."""
        return {k: getattr(self, k) for k in (
            "insns", "turns", "halted_turns", "yielded_turns", "short_turns", "count_mismatches",
            "restarted_insns", "icount_drift", "qemu_icount", "max_skew", "last_vcpu")}

    def load(self, state: dict) -> None:
        if len(state["insns"]) != self.nvcpus:
            raise ValueError(f"schedule state has {len(state['insns'])} vCPUs, want {self.nvcpus}")
        for k, v in state.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)

    def as_dict(self) -> dict:
        return {
            "vcpus": [
                {"vcpu": v, "insns": self.insns[v], "turns": self.turns[v],
                 "halted_turns": self.halted_turns[v], "yielded_turns": self.yielded_turns[v]}
                for v in range(self.nvcpus)
            ],
            "total_insns": self.total,
            "qemu_icount": self.qemu_icount,
            "max_skew": self.max_skew,
            "short_turns": self.short_turns,
            "count_mismatches": self.count_mismatches,
            "restarted_insns": self.restarted_insns,
            "icount_drift": self.icount_drift,
        }


def step(bridge: Bridge, schedule: Schedule, vcpu: int, n: int, **how: int | None) -> Report:
    """Caller-directed: run ``vcpu`` for ``n`` instructions and account it.

    ``how``: the batching and clock arguments of ``Bridge.step``.
    """
    report = bridge.step(vcpu, n, **how)  # type: ignore[arg-type]
    schedule.account(report)
    return report


def finish(bridge: Bridge, schedule: Schedule) -> Report:
    """The report of the step ``Bridge.send_step`` started, accounted."""
    report = bridge.finish()
    schedule.account(report)
    return report


def run_round_robin(bridge: Bridge, schedule: Schedule, max_insns: int | None = None,
                    on_report: Callable[[Report], bool] | None = None,
                    whole_rounds: bool = False) -> None:
    """Fixed round-robin until the guest exits, ``max_insns`` or ``on_report`` says stop.

    ``max_insns`` counts from the schedule's start (a restored snapshot's
    instructions included). The limit is exact: the last turns are issued
    as directed steps with a reduced budget, in the same vCPU order
    round-robin would use, so the limit never overshoots. With
    ``whole_rounds`` (a run that ends in a snapshot) it stops instead at
    the first round boundary at or after the limit: a snapshot must be a
    point that a longer straight run also passes through.

    Batches never cross a fast-mode digest block (see ``RunDigest``), so
    the digest does not depend on where the run was paused or split.
    """
    n = bridge.config.smp
    q = bridge.config.quantum
    batch = bridge.config.rr_batch_turns()
    while not schedule.exited:
        remaining = None if max_insns is None else max_insns - schedule.total
        if remaining is not None and remaining <= 0:
            if not whole_rounds or sum(schedule.turns) % n == 0:
                return
            report = bridge.rr(n - sum(schedule.turns) % n)
        elif remaining is not None and remaining < batch * q and not whole_rounds:
            report = bridge.step((schedule.last_vcpu + 1) % n, min(q, remaining))
        else:
            turns = min(batch, bridge.digest.turns_to_boundary())
            if remaining is not None and whole_rounds:
                turns = min(turns, n * max(1, remaining // (n * q)))
            report = bridge.rr(turns)
        schedule.account(report)
        if on_report is not None and on_report(report):
            return
