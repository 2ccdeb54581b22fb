"""Simulated time decides which vCPU runs next.

One SimPy environment; each vCPU is a core process. A core process asks the
bridge for one quantum of its vCPU (a caller-directed step), feeds the
turn's trace to the compiled core model, and sleeps for the simulated time
that took. SimPy wakes processes in time order, so the vCPU with the
smallest local time runs next (ties go to the lower vCPU id): the
functional interleaving follows simulated time within one quantum.

A vCPU that halts (WFI) is idle, not busy: it sleeps for one quantum's
worth of base time and is stepped again, which bounds how late it sees an
interrupt raised by another core to one quantum.

With a single vCPU there is no order to decide, so its turns are fetched
in batches (one round trip per ``QemuConfig.rr_batch_turns()``) and fed to
the model one by one exactly as single steps would be: same turns, same
cycles, a fraction of the round trips.

A run can stop and continue from a snapshot. Every vCPU's next wake-up is
its local time (``T_TIME``), except that the vCPU whose turn ended the run
has not yet slept off a halted turn; ``state()`` records that, and a
restored run starts each vCPU's process with a wake at its local time, so
the order of turns is the one the straight run would have taken.
"""

from __future__ import annotations

from typing import Callable, Generator

import numpy as np
import simpy

from .. import quantum
from ..libqflex_bridge import Bridge, Report
from ..trace import RECORD_DTYPE
from . import core
from .memory import TICKS_PER_CYCLE
from .state import Model


_NO_RECORDS = np.empty(0, dtype=RECORD_DTYPE)


class _Wake(simpy.Event):
    """A timeout ordered by (time, vCPU id) rather than by creation."""

    def __init__(self, env: simpy.Environment, delay: int, vcpu: int) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, priority=simpy.core.NORMAL + vcpu, delay=delay)


class TimingRun:
    """Drive a bridge in trace mode under the timing model until exit or a limit."""

    def __init__(self, bridge: Bridge, schedule: quantum.Schedule, model: Model,
                 max_insns: int | None = None,
                 on_report: Callable[[Report], bool] | None = None,
                 whole_turns: bool = False, resume: dict | None = None) -> None:
        """``max_insns`` counts from boot (a restored snapshot's instructions included).

        ``whole_turns``: never clip the last turn to hit ``max_insns``
        exactly; a run that ends in a snapshot must stop where a longer
        straight run also passes. ``resume``: ``state()`` of the run that
        wrote the snapshot the model was restored from.
        """
        self.bridge = bridge
        self.schedule = schedule
        self.model = model
        self.max_insns = max_insns
        self.on_report = on_report
        self.quantum = bridge.config.quantum
        self.idle_ticks = self.quantum * int(model.K.params[core.C_CPI])
        self.whole_turns = whole_turns
        self.max_time_skew = 0 if resume is None else int(resume["max_time_skew"])
        self._resume = resume
        self._pending_idle = -1     # vCPU whose halted last turn has not slept yet
        self._finished = False

    def state(self) -> dict:
        """What a snapshot needs to continue the order of turns (see module doc)."""
        return {"pending_idle": self._pending_idle, "max_time_skew": self.max_time_skew}

    def run(self) -> None:
        env = simpy.Environment()
        self._done = env.event()
        if self._resume is not None and self._resume["pending_idle"] >= 0:
            self._idle(int(self._resume["pending_idle"]), True)
        for v in range(self.model.ncores):
            env.process(self._core(env, v))
        env.run(until=self._done)

    def _feed(self, vcpu: int, records: np.ndarray | None, executed: int) -> int:
        """Run the core model over one turn's records; returns its ticks."""
        if records is None:
            records = _NO_RECORDS
        return core.run_turn(self.model.K, self.model.H, vcpu, records["addr"].view(np.int64),
                             records["idx"], records["kind"], records["flags"], executed)

    def _core(self, env: simpy.Environment, v: int) -> Generator:
        sched = self.schedule
        scal = self.model.K.scal
        if self._resume is not None:
            yield _Wake(env, int(scal[v, core.T_TIME]), v)
        while not self._finished:
            report = self._next_report(v)
            ticks = 0
            halted = False
            for k, turn in enumerate(report.turn_list):
                if k:
                    # a batch (one vCPU): each turn after a halted one starts later
                    ticks += self._idle(v, halted)
                ticks += self._feed(turn.vcpu, turn.records, turn.executed)
                halted = turn.halted
            if report.exited and report.partial_vcpu >= 0:
                ticks += self._feed(report.partial_vcpu, report.partial_records,
                                    report.partial_insns)
            times = scal[:, core.T_TIME]
            self.max_time_skew = max(self.max_time_skew, int(times.max() - times.min()))
            # a snapshot taken now (in on_report or after the end) must know
            # that this vCPU has yet to sleep off a halted turn
            self._pending_idle = v if halted else -1
            stop = self.on_report(report) if self.on_report is not None else False
            if stop or report.exited or (self.max_insns is not None
                                         and sched.total >= self.max_insns):
                self._finished = True
                self._done.succeed()
                return
            ticks += self._idle(v, halted)
            yield _Wake(env, ticks, v)

    def _next_report(self, v: int) -> Report:
        """The next turn of vCPU ``v``, or a batch of turns when it is the only one."""
        sched = self.schedule
        remaining = None if self.max_insns is None else self.max_insns - sched.total
        batch = self.bridge.config.rr_batch_turns()
        if self.model.ncores == 1 and (remaining is None or remaining >= batch * self.quantum):
            report = self.bridge.rr(batch)
            sched.account(report)
            return report
        n = self.quantum if remaining is None or self.whole_turns else min(self.quantum, remaining)
        return quantum.step(self.bridge, sched, v, n)

    def _idle(self, v: int, halted: bool) -> int:
        """Idle ticks after a halted turn (local time passes, counted as idle); 0 otherwise."""
        if not halted:
            return 0
        self.model.K.scal[v, core.T_IDLE] += self.idle_ticks
        self.model.K.scal[v, core.T_TIME] += self.idle_ticks
        return self.idle_ticks

    @property
    def cycles(self) -> int:
        """Simulated cycles of the run: the latest core's local time."""
        return int(self.model.K.scal[:, core.T_TIME].max()) // TICKS_PER_CYCLE
