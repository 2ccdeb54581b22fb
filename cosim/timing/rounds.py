"""Round order: several vCPUs' turns per bridge round trip (``--order round``).

The exact order (``engine.TimingRun``) steps one vCPU per command: the one
with the smallest simulated time. With several busy vCPUs that is one
synchronous round trip per 1000-instruction turn, and the hand-off, not
QEMU or the model, sets the speed. A round instead gives every vCPU that
is due within a window one command's worth of turns:

- the window starts at the smallest local time ``t_min`` of the vCPUs that
  can run (parked ones at their wake-up) and is ``W`` wide, the longest
  predicted turn among them; a vCPU whose local time is inside it takes
  ``(t_min + W - t) // its predicted turn`` turns (at least one, at most a
  batch), so a fast vCPU runs more turns than a slow one, as in the exact
  order (QFlex's budgets proportional to IPC);
- QEMU runs the round's turns interleaved in vCPU order (one round trip),
  and the model feeds them in simulated-time order (``core.run_round``):
  each turn is charged against the same caches and memory as in the exact
  order, only the functional interleaving of vCPUs differs, by at most the
  window. ``max_time_skew`` reports how far apart the vCPUs' local times
  got;
- while only one vCPU can run, commands are the exact order's batches.

Parking, wake-ups, deadlines and the guest clock follow the exact order's
rules (see ``engine``), applied per round: a vCPU idle at the round's end
parks, a parked vCPU woken by the round's last turn wakes at its end (or
its start, for a timer the clock made due), and the clock of each vCPU's
turns is its own simulated time (QEMU's clock never goes back, so a vCPU
behind another in the round sees the other's later time: an error bounded
by the skew). Every decision is a function of the model's state, so runs
are reproducible and a snapshot (taken between rounds) continues as the
straight run would.
"""

from __future__ import annotations

import numpy as np

from .. import quantum
from ..libqflex_bridge import Report, Turn
from . import core
from .clock import rate_between
from .engine import TimingRun, packed_turns


class RoundRun(TimingRun):
    """``TimingRun`` in round order: one command for every vCPU due in a window."""

    def run(self) -> None:
        n = self.model.ncores
        self._head = np.zeros(n, dtype=np.int64)
        for v in range(n):
            # a continuation an exact-order snapshot decided runs first
            cmd = self._next_cmd[v]
            if cmd is not None:
                self._next_cmd[v] = None
                if self._command(v, cmd):
                    return
        while True:
            plan = self._plan()
            if plan is None:
                self.stalled = True
                return
            if isinstance(plan, int):
                v = plan
                stop = self._command(v, self._decide(v, int(self.model.K.scal[v, core.T_TIME]),
                                                     self.last_vclock))
            else:
                stop = self._round(*plan)
            if stop:
                return

    def state(self) -> dict:
        st = super().state()
        st["next_cmd"] = []     # a round is always complete at a snapshot
        return st

    # -- what runs next ------------------------------------------------------

    def _due(self) -> list[int | None]:
        """When each vCPU can run next: its local time, a parked one's wake-up, or None."""
        scal = self.model.K.scal
        due: list[int | None] = []
        for u in range(self.model.ncores):
            if self.parked[u]:
                t = self._target(u)
                due.append(None if t is None else max(t, int(scal[u, core.T_TIME])))
            else:
                due.append(int(scal[u, core.T_TIME]))
        return due

    def _per_turn(self, u: int) -> int:
        ticks, insns = self.pred[u]
        return max(1, ticks * self.quantum // insns)

    def _plan(self) -> int | tuple[list[int], list[int]] | None:
        """The next command: a vCPU to step alone, (members, turns) of a round, or None.

        Parked vCPUs due inside the window wake first (their idle time
        counted), as the exact order would wake them.
        """
        due = self._due()
        live = [u for u in range(len(due)) if due[u] is not None]
        if not live:
            return None
        t_min = min(due[u] for u in live)  # type: ignore[type-var]
        width = max(self._per_turn(u) for u in live)
        horizon = t_min + width
        members = [u for u in live if due[u] < horizon]  # type: ignore[operator]
        scal = self.model.K.scal
        for u in members:
            if self.parked[u]:
                t = int(due[u])  # type: ignore[arg-type]
                scal[u, core.T_IDLE] += t - int(scal[u, core.T_TIME])
                scal[u, core.T_TIME] = t
                self.parked[u] = False
                self.wake_at[u] = -1
        remaining = None if self.max_insns is None else self.max_insns - self.schedule.total
        if len(members) == 1:
            return members[0]
        turns = [max(1, min(self.max_batch, (horizon - int(scal[u, core.T_TIME]))
                            // self._per_turn(u))) for u in members]
        if remaining is not None and not self.whole_turns \
                and remaining < self.quantum * sum(turns):
            # the last instructions before the limit: one vCPU at a time, clipped
            return min(members, key=lambda u: (int(scal[u, core.T_TIME]), u))
        return members, turns

    # -- one command -----------------------------------------------------------

    def _command(self, v: int, cmd: dict) -> bool:
        """One vCPU's command, fed and observed as the exact order does; True: stop."""
        scal = self.model.K.scal
        t0 = int(scal[v, core.T_TIME])
        self._send(cmd)
        report = quantum.finish(self.bridge, self.schedule)
        self._cap_ns, self._turns = cmd["cap"], cmd["turns"]
        last_start = self._feed_report(v, report)
        t1 = int(scal[v, core.T_TIME])
        self._note_skew()
        self._observe(v, report, t0, last_start, t1)
        return self._after(report)

    def _round(self, members: list[int], turns: list[int]) -> bool:
        """One round of several vCPUs: sent, fed in time order, observed; True: stop."""
        scal = self.model.K.scal
        n = self.model.ncores
        q = self.quantum
        t0 = {u: int(scal[u, core.T_TIME]) for u in members}
        budget = [0] * n
        count = [0] * n
        clock, rate, cap = [0] * n, [0] * n, [-1] * n
        ends = []
        for u, k in zip(members, turns):
            budget[u], count[u] = q, k
            ticks, insns = self.pred[u]
            end = t0[u] + ticks * q * k // insns
            ends.append(end)
            clock[u] = self.clock.ns(t0[u])
            rate[u] = rate_between(clock[u], self.clock.ns(end), q * k)
        round_cap = self.clock.ns(max(ends))
        for u in members:
            cap[u] = round_cap
        parked = sum(1 << u for u in range(n) if self.parked[u] and u < 64)
        use_clock = self.bridge.config.clock == "model"
        self.bridge.send_round(budget, count, parked=parked,
                               clock=clock if use_clock else None,
                               rate=rate if use_clock else None,
                               cap=cap if use_clock else None)
        report = quantum.finish(self.bridge, self.schedule)
        last_start, last_end = self._feed_round(report)
        self._note_skew()
        self._observe_round(members, report, t0, last_start, last_end, round_cap)
        return self._after(report)

    def _feed_round(self, report: Report) -> tuple[int, int]:
        """Feed a round's turns in simulated-time order; (start, end) of QEMU's last turn."""
        scal = self.model.K.scal
        turns = report.turn_list
        last_start = last_end = 0
        if turns:
            starts = np.zeros(len(turns), dtype=np.int64)
            ticks = np.zeros(len(turns), dtype=np.int64)
            core.run_round(self.model.K, self.model.H,
                           np.array([t.vcpu for t in turns], dtype=np.int64),
                           *packed_turns(turns), starts, ticks, self._head,
                           np.zeros(len(turns), dtype=np.int64))
            last_start = int(starts[-1])
            last_end = last_start + int(ticks[-1])
        if report.exited and report.partial_vcpu >= 0:
            self._feed(report.partial_vcpu, report.partial_records, report.partial_insns)
        return last_start, last_end

    def _observe_round(self, members: list[int], report: Report, t0: dict[int, int],
                       last_start: int, last_end: int, cap_ns: int) -> None:
        """Rates, clock error, parking and wake-ups after a round (the exact order's rules)."""
        scal = self.model.K.scal
        for u in members:
            executed = report.insns[u] + (report.partial_insns if report.partial_vcpu == u else 0)
            t1 = int(scal[u, core.T_TIME])
            if executed > 0 and t1 > t0[u]:
                self.pred[u] = [t1 - t0[u], executed]
        if report.vclock >= 0:
            self.last_vclock = report.vclock
            if report.turn_list:
                ideal = min(self.clock.ns(last_end), cap_ns)
                self.max_lead_ns = max(self.max_lead_ns, report.vclock - ideal)
                self.max_lag_ns = max(self.max_lag_ns, self.clock.ns(last_end) - report.vclock)
        if report.exited:
            return
        for u, at_start in self._woken(-1, report):
            self._wake(u, last_start if at_start else last_end)
        last_of: dict[int, Turn] = {t.vcpu: t for t in report.turn_list}
        for u in members:
            if u < 64 and (report.idle_mask >> u) & 1:
                self.parked[u] = True
                self.wake_at[u] = -1
        self.deadline_ns = report.deadline
        for u in members:
            last = last_of.get(u)
            if not self.parked[u] and last is not None and not last.halted \
                    and last.executed < last.budget:
                self._spin_wait(u, int(scal[u, core.T_TIME]))

    def _note_skew(self) -> None:
        times = self.model.K.scal[:, core.T_TIME]
        self.max_time_skew = max(self.max_time_skew, int(times.max() - times.min()))

    def _after(self, report: Report) -> bool:
        """``on_report`` and the end conditions, between commands; True: stop."""
        stop = self.on_report(report) if self.on_report is not None else False
        if stop or report.exited or (self.max_insns is not None
                                     and self.schedule.total >= self.max_insns):
            self._finished = True
            return True
        return False
