"""Round order: several vCPUs' turns per bridge round trip (``--order round``).

The exact order (``engine.TimingRun``) steps one vCPU per command: the one
with the smallest simulated time. With several busy vCPUs that is one
synchronous round trip per 1000-instruction turn, and the hand-off, not
QEMU or the model, sets the speed. A round instead gives every vCPU that
is due within a window one command's worth of turns:

- the window starts at the smallest local time ``t_min`` of the vCPUs that
  can run (parked ones at their wake-up) and is ``W`` wide,
  ``WINDOW_TURNS`` times the longest predicted turn among them; a vCPU
  whose local time is inside it takes ``(t_min + W - t) // its predicted
  turn`` turns (at least one, at most ``ROUND_TURNS``), so a fast vCPU runs
  more turns than a slow one, as in the exact order (QFlex's budgets
  proportional to IPC);
- QEMU runs the round's turns interleaved in vCPU order (one round trip),
  and the model feeds them in simulated-time order (``core.run_round``):
  each turn is charged against the same caches and memory as in the exact
  order, only the functional interleaving of vCPUs differs, by at most the
  window. ``max_time_skew`` reports how far apart the vCPUs' local times
  got;
- while only one vCPU can run, commands are the exact order's batches.

A round whose vCPUs simply go on (none parked, woke, halted or stopped
short) has the next round decided as soon as its report arrives, from the
members' predicted ends instead of their fed times, and QEMU runs it on
the other host core while the model feeds the previous one (as the exact
order's continuations do); whether it starts early changes nothing but
speed, and a snapshot holds the decided round.

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

    ORDER = "round"
    #: turns of one vCPU in one round at most. Predictions are the rates of
    #: the vCPUs' last rounds and the window is the slowest one's predicted
    #: turn, so after one slow turn (queued behind bandwidth the others had
    #: booked) or a change of rate (a hart leaving a barrier spin, IPC 4,
    #: for memory-bound work, IPC 0.6) the fast vCPUs' budgets would span up
    #: to a whole batch (100 turns at quantum 1000): they ran far ahead,
    #: booked memory bandwidth ahead of the others and reached the next
    #: barrier early, to spin there. With the batch as the limit STREAM with
    #: 4 harts ran 108.7 M instructions (exact order: 85.6 M) with a skew of
    #: 189 k cycles; with 8, 88.2 M and 51 k cycles, in 11.6 k round trips
    #: instead of 10.4 k.
    ROUND_TURNS = 8
    #: the window, in turns of its slowest vCPU. With one turn every round
    #: was a turn per vCPU, so with 4 busy vCPUs a round trip, its Python
    #: and its hand-off came every 4000 instructions: a quarter of the wall
    #: time (GUPS, 4 harts, 150 M instructions: 13.0 s with one turn, 8.8
    #: with 3, 8.5 with 4). QEMU still runs a round's turns one by one in
    #: vCPU order, so while the vCPUs' rates are alike the functional
    #: interleaving stays a turn apart; the skew the window allows is
    #: reported (``max_time_skew``). With 4, false sharing at quantum 1000
    #: drifted 6% from the exact order's cycles; with 3, within 5%.
    WINDOW_TURNS = 3
    #: the command decided before the model fed the last report (see _continuation_of)
    _pending: tuple[str, dict] | None = None

    def run(self) -> None:
        n = self.model.ncores
        self._head = np.zeros(n, dtype=np.int64)
        pending = self._restored()
        while True:
            cmd = pending if pending is not None else self._next_command()
            self._pending = None
            if cmd is None:
                self.stalled = True
                return
            kind, c = cmd
            t0 = [int(x) for x in self.model.K.scal[:, core.T_TIME]]
            if not self._in_flight:
                self._send_command(cmd)
            self._in_flight = False
            report = quantum.finish(self.bridge, self.schedule)
            # the next command, when it continues this one, is decided now
            # (before the model sees this report) and may start at once
            pending = self._continuation_of(cmd, report, t0)
            self._pending = pending
            if pending is not None and self.overlap and self._may_start() \
                    and not (self.hold is not None and self.hold()):
                self._send_command(pending)
                self._in_flight = True
                self.early_starts += 1
            if kind == "step":
                self._observe_step(c, report, t0)
            else:
                last_start, last_end = self._feed_round(report)
                self._note_skew()
                self._observe_round(c["members"], report, t0, last_start, last_end,
                                    c["round_cap"])
            if self._in_flight:
                if self.on_progress is not None:
                    self.on_progress(report)
                continue
            if self._after(report):
                return

    def state(self) -> dict:
        st = super().state()
        st["next_cmd"] = []
        kind, c = self._pending if self._pending is not None else ("", {})
        if kind == "step":
            st["next_cmd"] = [[c["vcpu"], c]]
        elif kind == "round":
            st["next_round"] = c
        return st

    def _restored(self) -> tuple[str, dict] | None:
        """The command a snapshot's run had decided (a round, or an exact-order step)."""
        rnd = (self._resume or {}).get("next_round")
        if rnd is not None:
            return "round", {k: (int(x) if isinstance(x, int) else [int(y) for y in x])
                             for k, x in rnd.items()}
        for v, cmd in enumerate(self._next_cmd):
            if cmd is not None:
                self._next_cmd[v] = None
                return "step", cmd
        return None

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

    def _window(self, due: list[int | None]) -> tuple[list[int], list[int]] | int | None:
        """The vCPUs due within the window from ``due`` and their turns, a lone vCPU, or None.

        A pure function of ``due`` and the rate predictions, so a round
        decided from predicted times (a continuation) is the one a run that
        waited for the model would decide from the same times.
        """
        live = [u for u in range(len(due)) if due[u] is not None]
        if not live:
            return None
        t_min = min(due[u] for u in live)  # type: ignore[type-var]
        horizon = t_min + self.WINDOW_TURNS * max(self._per_turn(u) for u in live)
        members = [u for u in live if due[u] < horizon]  # type: ignore[operator]
        if len(members) == 1:
            return members[0]
        most = min(self.max_batch, self.ROUND_TURNS)
        turns = [max(1, min(most, (horizon - int(due[u])) // self._per_turn(u)))
                 for u in members]
        remaining = None if self.max_insns is None else self.max_insns - self.schedule.total
        if remaining is not None and not self.whole_turns \
                and remaining < self.quantum * sum(turns):
            # the last instructions before the limit: one vCPU at a time, clipped
            return min(members, key=lambda u: (int(due[u]), u))  # type: ignore[arg-type]
        return members, turns

    def _next_command(self) -> tuple[str, dict] | None:
        """The next command decided from the model's state: a lone vCPU's step or a round.

        Parked vCPUs due inside the window wake first (their idle time
        counted), as the exact order would wake them.
        """
        due = self._due()
        plan = self._window(due)
        if plan is None:
            return None
        scal = self.model.K.scal
        for u in ([plan] if isinstance(plan, int) else plan[0]):
            if self.parked[u]:
                t = int(due[u])  # type: ignore[arg-type]
                scal[u, core.T_IDLE] += t - int(scal[u, core.T_TIME])
                scal[u, core.T_TIME] = t
                self.parked[u] = False
                self.wake_at[u] = -1
        if isinstance(plan, int):
            return "step", self._decide(plan, int(scal[plan, core.T_TIME]), self.last_vclock)
        return "round", self._round_command(*plan, [int(x) for x in scal[:, core.T_TIME]])

    def _continuation_of(self, cmd: tuple[str, dict], report: Report,
                         t0: list[int]) -> tuple[str, dict] | None:
        """The command after ``report`` when the vCPUs simply go on, else None.

        Decided before the model has fed the report, from the report and the
        predicted ends of its turns (``_continuation`` for a lone vCPU).
        After a round, the next one is decided early when nothing in it
        parked, woke, halted or stopped short of its budget and no vCPU is
        parked at all: then the window depends only on the vCPUs' times,
        and the members' predicted ends stand in for their fed ones.
        """
        kind, c = cmd
        if kind == "step":
            nxt = self._continuation(c["vcpu"], report, t0[c["vcpu"]])
            return None if nxt is None else ("step", nxt)
        n = self.model.ncores
        if report.exited or not report.turn_list or n > 64 or any(self.parked) \
                or report.idle_mask & ((1 << n) - 1):
            return None
        last_of: dict[int, Turn] = {t.vcpu: t for t in report.turn_list}
        due: list[int | None] = list(t0)
        for u, k in zip(c["members"], c["turns"]):
            last = last_of.get(u)
            if last is None or last.halted or report.insns[u] != self.quantum * k:
                return None
            ticks, insns = self.pred[u]
            due[u] = t0[u] + ticks * report.insns[u] // insns
        plan = self._window(due)
        if not isinstance(plan, tuple):
            return None
        return "round", self._round_command(*plan, due)  # type: ignore[arg-type]

    def _round_command(self, members: list[int], turns: list[int], start: list[int]) -> dict:
        """A round's command: per-vCPU budgets, turn counts and clocks from their start times."""
        n = self.model.ncores
        q = self.quantum
        budget, count = [0] * n, [0] * n
        clock, rate, cap = [0] * n, [0] * n, [-1] * n
        ends = []
        for u, k in zip(members, turns):
            budget[u], count[u] = q, k
            ticks, insns = self.pred[u]
            end = start[u] + ticks * q * k // insns
            ends.append(end)
            clock[u] = self.clock.ns(start[u])
            rate[u] = rate_between(clock[u], self.clock.ns(end), q * k)
        round_cap = self.clock.ns(max(ends))
        for u in members:
            cap[u] = round_cap
        parked = sum(1 << u for u in range(n) if self.parked[u] and u < 64)
        return {"members": list(members), "turns": list(turns), "budget": budget,
                "count": count, "clock": clock, "rate": rate, "cap": cap,
                "parked": parked, "round_cap": round_cap}

    # -- one command -----------------------------------------------------------

    def _send_command(self, cmd: tuple[str, dict]) -> None:
        kind, c = cmd
        if kind == "step":
            self._send(c)
            return
        use_clock = self.bridge.config.clock == "model"
        if self.model.chmu is not None:
            self.model.chmu.before_command()
        self.bridge.send_round(c["budget"], c["count"], parked=c["parked"],
                               clock=c["clock"] if use_clock else None,
                               rate=c["rate"] if use_clock else None,
                               cap=c["cap"] if use_clock else None)

    def _observe_step(self, c: dict, report: Report, t0: list[int]) -> None:
        """One vCPU's command, fed and observed as the exact order does."""
        v = c["vcpu"]
        self._cap_ns, self._turns = c["cap"], c["turns"]
        last_start = self._feed_report(v, report)
        self._note_skew()
        self._observe(v, report, t0[v], last_start, int(self.model.K.scal[v, core.T_TIME]))

    def _feed_round(self, report: Report) -> tuple[int, int]:
        """Feed a round's turns in simulated-time order; (start, end) of QEMU's last turn."""
        turns = report.turn_list
        last_start = last_end = 0
        if turns:
            starts = np.zeros(len(turns), dtype=np.int64)
            ticks = np.zeros(len(turns), dtype=np.int64)
            core.run_round(self.model.K, self.model.H,
                           np.array([t.vcpu for t in turns], dtype=np.int64),
                           *packed_turns(report), starts, ticks, self._head,
                           np.zeros(len(turns), dtype=np.int64))
            last_start = int(starts[-1])
            last_end = last_start + int(ticks[-1])
        if report.exited and report.partial_vcpu >= 0:
            self._feed(report.partial_vcpu, report.partial_records, report.partial_insns)
        self._epochs(self._decided_unsent(-1))
        return last_start, last_end

    def _decided_unsent(self, v: int) -> bool:
        return self._pending is not None and not self._in_flight

    def _observe_round(self, members: list[int], report: Report, t0: list[int],
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
