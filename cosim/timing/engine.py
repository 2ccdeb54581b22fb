"""Simulated time decides which vCPU runs next, and the guest lives in it.

One SimPy environment; each vCPU is a core process. A core process asks the
bridge for a turn of its vCPU (a caller-directed step), feeds the turn's
trace to the compiled core model, and sleeps for the simulated time that
took. SimPy wakes processes in time order, so the vCPU with the smallest
local time runs next (ties go to the lower vCPU id): the functional
interleaving follows simulated time within one quantum.

The guest's clock is simulated time (``clock.GuestClock``, qemu patch
0009). Every command sets QEMU's virtual clock to the simulated time of
the vCPU about to run; during the turn it advances at that vCPU's recent
rate (ns per instruction of its last turn) and stops at the simulated time
of the next turn of any other vCPU, so it never runs ahead of what runs
next and never goes back. Virtual timers therefore fire where simulated
time reaches them.

Halted vCPUs sleep. A turn that leaves its vCPU halted with nothing to do
(the plugin reports the idle mask at every turn end) parks the vCPU: it
is not stepped again until something can wake it, either

- another vCPU's turn made it runnable (an IPI, a device interrupt): it
  wakes at the end of that turn, or at its start when the interrupt came
  from a timer that the turn's clock set made due; or
- the next virtual-timer deadline: the lowest parked vCPU is stepped at
  that simulated time, which fires the timer; the turn's idle masks tell
  which vCPUs it woke (they run from that time), and a vCPU that is still
  idle parks again.

When every vCPU is parked, simulated time jumps to the next deadline; with
none armed the run ends (``stalled``). Parked time is idle time.

While no other vCPU is due to run (one vCPU, every other parked, or the
others' local times ahead) there is no order to decide: a vCPU's turns come
in batches, one round trip for up to ``QemuConfig.rr_batch_turns()`` turns,
ending early when it halts or a parked vCPU has work again (the plugin
checks), and sized to end, as predicted, by the time the next other vCPU
runs or a parked one is due to wake. The model consumes the
turns one by one, exactly as single steps would. Within a batch the clock
runs at the predicted rate (the vCPU's ns per instruction over its last
command), so a batch is sized to span at most ``BATCH_SPAN_NS`` of
predicted simulated time (or one turn, if a turn is longer): in a steady
phase the clock then stays within a few ns of simulated time, and where
the workload changes pace inside a batch the error is bounded by that
batch's span and corrected at the next command. The largest error seen at
a batch end is reported (``max_batch_drift_ns``). Batch sizes are a
function of the model's state, so runs stay reproducible.

A vCPU that goes on alone (its last turn ran to its budget without
halting, no parked vCPU got work, no other vCPU is due within a turn of
its predicted end) has its next command decided as soon as the report
arrives, before the model feeds it: from the report's counts, masks and
deadline and the command's predicted end (``_continuation``). So QEMU can
run that command on the other host core while the model consumes the
previous one (the overlap), and whether it does (a control request
queued, or ``overlap=False``) changes nothing but speed. Other commands
are decided after the model, in simulated-time order.

A run can stop and continue from a snapshot: ``state()`` holds the parked
vCPUs, their wake-ups, the next deadline, the clock offset, the rate
predictions and a continuation already decided; a restored run sends that
continuation first, starts every other running vCPU's process with a wake
at its local time and every parked one asleep with its target, so the
order of turns is the one the straight run would have taken.
"""

from __future__ import annotations

from typing import Callable, Generator, Iterator

import numpy as np
import simpy

from .. import quantum
from ..libqflex_bridge import Bridge, Report, Turn
from ..trace import RECORD_DTYPE
from . import core
from .clock import GuestClock, rate_between
from .memory import TICKS_PER_CYCLE
from .state import Model
from .timeline import Timeline

_NO_RECORDS = np.empty(0, dtype=RECORD_DTYPE)
_NO_BYTES = np.empty(0, dtype=np.uint8)

#: a batch of turns spans at most this much predicted simulated time (or one turn)
BATCH_SPAN_NS = 10_000


def packed_turns(report: Report) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(records, bounds, executed) of a report's turns, as the multi-turn kernels take them.

    The records as they lie in the shared buffer when they do, else joined.
    """
    turns = report.turn_list
    executed = np.array([t.executed for t in turns], dtype=np.int64)
    if report.trace is not None:
        return (*report.trace, executed)
    parts = [_NO_BYTES if t.records is None else t.records.view(np.uint8) for t in turns]
    bounds = np.zeros(len(turns) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=bounds[1:])
    bounds //= RECORD_DTYPE.itemsize
    return np.concatenate(parts).view(RECORD_DTYPE), bounds, executed


class _Wake(simpy.Event):
    """A timeout ordered by (time, vCPU id) rather than by creation."""

    def __init__(self, env: simpy.Environment, delay: int, vcpu: int) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, priority=simpy.core.NORMAL + vcpu, delay=delay)


class TimingRun:
    """Drive a bridge in trace mode under the timing model until exit or a limit."""

    #: the order of turns, as a snapshot records it (``cosim run --order``)
    ORDER = "exact"

    def __init__(self, bridge: Bridge, schedule: quantum.Schedule, model: Model,
                 max_insns: int | None = None,
                 on_report: Callable[[Report], bool] | None = None,
                 whole_turns: bool = False, resume: dict | None = None,
                 hold: Callable[[], bool] | None = None,
                 on_progress: Callable[[Report], None] | None = None,
                 overlap: bool = True) -> None:
        """``max_insns`` counts from boot (a restored snapshot's instructions included).

        ``whole_turns``: never clip the last turn to hit ``max_insns``
        exactly; a run that ends in a snapshot must stop where a longer
        straight run also passes. ``resume``: ``state()`` of the run that
        wrote the snapshot the model was restored from (or of a warm-up).
        ``on_report`` runs between commands, with QEMU stopped; while a
        continuation already runs in QEMU, ``on_progress`` runs instead.
        ``hold``: asked before a continuation starts early; True (a control
        request is queued, say) keeps QEMU stopped until ``on_report`` ran.
        ``overlap=False`` never starts a continuation early (same results,
        no overlap: for measuring what the overlap gains).
        """
        self.bridge = bridge
        self.schedule = schedule
        self.model = model
        self.max_insns = max_insns
        self.on_report = on_report
        self.on_progress = on_progress
        self.hold = hold
        self.overlap = overlap
        self.quantum = bridge.config.quantum
        self.whole_turns = whole_turns
        self.max_batch = bridge.config.rr_batch_turns()
        n = model.ncores
        scal = model.K.scal
        st = resume or {}
        ghz = model.cfg.core.frequency_ghz
        if "offset_ns" in st:
            offset = int(st["offset_ns"])
        else:
            # the guest clock before the first turn is where simulated time starts
            offset = max(0, bridge.vclock) - GuestClock(ghz, 0).ns(int(scal[:, core.T_TIME].min()))
        self.clock = GuestClock(ghz, offset)
        self.parked: list[bool] = [bool(x) for x in st.get("parked", [False] * n)]
        self.wake_at: list[int] = [int(x) for x in st.get("wake_at", [-1] * n)]
        self.deadline_ns = int(st.get("deadline_ns", -1))
        cpi = int(model.K.params[core.C_CPI])
        self.pred: list[list[int]] = [list(map(int, p)) for p in st.get("pred", [[cpi, 1]] * n)]
        self.last_vclock = int(st.get("last_vclock", bridge.vclock))
        self.max_time_skew = int(st.get("max_time_skew", 0))
        self.max_lead_ns = int(st.get("max_lead_ns", 0))
        self.max_lag_ns = int(st.get("max_lag_ns", 0))
        self.max_batch_drift_ns = int(st.get("max_batch_drift_ns", 0))
        self.stalled = False            # every vCPU parked and no timer armed
        self._resume = resume
        self._procs: list[simpy.Process] = []
        self._sleep_target: list[int | None] = [None] * n
        self._finished = False
        self._cap_ns = -1               # of the command being observed
        self._turns = 1
        # a continuation decided from the report before it (see _continuation)
        self._next_cmd: list[dict | None] = [None] * n
        for v, cmd in st.get("next_cmd", []):
            self._next_cmd[int(v)] = {k: int(x) for k, x in cmd.items()}
        self._in_flight = False         # the next command already runs in QEMU
        self.early_starts = 0           # continuations started before the model fed
        self._span_ticks = self.clock.ticks(self.clock.offset_ns + BATCH_SPAN_NS)
        self.timeline: Timeline | None = None   # traffic per interval, when asked for

    def state(self) -> dict:
        """What a snapshot needs to continue the order of turns (see module doc)."""
        return {"order": self.ORDER, "parked": list(self.parked), "wake_at": list(self.wake_at),
                "deadline_ns": self.deadline_ns, "offset_ns": self.clock.offset_ns,
                "pred": [list(p) for p in self.pred],
                "last_vclock": self.last_vclock, "max_time_skew": self.max_time_skew,
                "max_lead_ns": self.max_lead_ns, "max_lag_ns": self.max_lag_ns,
                "max_batch_drift_ns": self.max_batch_drift_ns,
                "next_cmd": [[v, c] for v, c in enumerate(self._next_cmd) if c is not None]}

    def run(self) -> None:
        env = simpy.Environment()
        self._env = env
        self._done = env.event()
        self._never = env.event()
        self._procs = [env.process(self._core(env, v)) for v in range(self.model.ncores)]
        try:
            env.run(until=self._done)
        except RuntimeError as e:
            if self._done.triggered or "No scheduled events left" not in str(e):
                raise
            # no events left: every vCPU is parked and no timer can wake one
            self.stalled = True

    # -- one vCPU ------------------------------------------------------------

    def _core(self, env: simpy.Environment, v: int) -> Generator:
        scal = self.model.K.scal
        if self._resume is not None and not self.parked[v] and self._next_cmd[v] is None:
            yield _Wake(env, int(scal[v, core.T_TIME]) - env.now, v)
        while not self._finished:
            if self.parked[v]:
                yield from self._sleep(env, v)
            t0 = int(scal[v, core.T_TIME])
            cmd = self._next_cmd[v]
            self._next_cmd[v] = None
            if cmd is None:
                cmd = self._decide(v, t0, self.last_vclock)
            if not self._in_flight:
                self._send(cmd)
            self._in_flight = False
            report = quantum.finish(self.bridge, self.schedule)
            # the next command, when it continues this one, is decided now
            # (before the model sees this report) and may start at once
            nxt = self._continuation(v, report, t0)
            self._next_cmd[v] = nxt
            if nxt is not None and self.overlap and self._may_start() \
                    and not (self.hold is not None and self.hold()):
                self._send(nxt)
                self._in_flight = True
                self.early_starts += 1
            self._cap_ns, self._turns = cmd["cap"], cmd["turns"]
            last_start = self._feed_report(v, report)
            t1 = int(scal[v, core.T_TIME])
            times = scal[:, core.T_TIME]
            self.max_time_skew = max(self.max_time_skew, int(times.max() - times.min()))
            self._observe(v, report, t0, last_start, t1)
            # a snapshot taken now (in on_report or after the end) sees the
            # parking and wake-ups this report caused
            if self._in_flight:
                if self.on_progress is not None:
                    self.on_progress(report)
                continue
            stop = self.on_report(report) if self.on_report is not None else False
            sched = self.schedule
            if stop or report.exited or (self.max_insns is not None
                                         and sched.total >= self.max_insns):
                self._finished = True
                self._done.succeed()
                return
            if self._next_cmd[v] is None and not self.parked[v]:
                yield _Wake(env, int(scal[v, core.T_TIME]) - env.now, v)

    def _may_start(self) -> bool:
        """Whether a decided continuation may run before this report is done with."""
        return self.max_insns is None or self.schedule.total < self.max_insns

    def _send(self, cmd: dict) -> None:
        if self.model.chmu is not None:
            self.model.chmu.before_command()
        self.bridge.send_step(cmd["vcpu"], cmd["n"], turns=cmd["turns"], parked=cmd["parked"],
                              clock=cmd["clock"], rate=cmd["rate"], cap=cmd["cap"])

    def _sleep(self, env: simpy.Environment, v: int) -> Generator:
        """Sleep while parked; return at the wake-up, idle time counted."""
        scal = self.model.K.scal
        while True:
            target = self._target(v)
            self._sleep_target[v] = target
            if target is None:
                ev: simpy.Event = self._never
            else:
                ev = _Wake(env, max(target, int(scal[v, core.T_TIME]), env.now) - env.now, v)
            try:
                yield ev
                break
            except simpy.Interrupt:
                continue            # a new target: sleep again
        now = int(env.now)
        idle = now - int(scal[v, core.T_TIME])
        if idle > 0:
            scal[v, core.T_IDLE] += idle
            scal[v, core.T_TIME] = now
        self.parked[v] = False
        self.wake_at[v] = -1
        self._sleep_target[v] = None

    def _target(self, v: int) -> int | None:
        """When parked vCPU ``v`` wakes: woken by a turn, or stepped at the next deadline.

        The deadline is stepped by one parked vCPU only, the first that can
        be there (the earliest local time, then the lowest id): its turn
        start fires the timer, and the turn's masks tell whom it woke.
        """
        t = self.wake_at[v] if self.wake_at[v] >= 0 else None
        if self.deadline_ns >= 0:
            alarm = self.clock.ticks(self.deadline_ns)
            scal = self.model.K.scal
            owner = min((max(alarm, int(scal[u, core.T_TIME])), u)
                        for u in range(self.model.ncores) if self.parked[u])[1]
            if v == owner:
                t = alarm if t is None else min(t, alarm)
        return t

    def _next_other(self, v: int) -> int | None:
        """The earliest simulated time at which another vCPU runs, as far as is known."""
        scal = self.model.K.scal
        best: int | None = None
        for u in range(self.model.ncores):
            if u == v:
                continue
            if self.parked[u]:
                t = self._target(u)
                if t is None:
                    continue
                t = max(t, int(scal[u, core.T_TIME]))
            else:
                t = int(scal[u, core.T_TIME])
            best = t if best is None else min(best, t)
        return best

    def _decide(self, v: int, t0: int, last_vclock: int) -> dict:
        """The next command of vCPU ``v`` starting at ``t0`` (a batch when it runs alone)."""
        sched = self.schedule
        q = self.quantum
        remaining = None if self.max_insns is None else self.max_insns - sched.total
        n = q if remaining is None or self.whole_turns else max(1, min(q, remaining))
        others = self._next_other(v)
        ticks, insns = self.pred[v]
        turns = 1
        if n == q:
            # as many turns as are predicted to end before any other vCPU runs
            per_turn = max(1, ticks * q // insns)
            turns = min(self.max_batch, max(1, self._span_ticks // per_turn))
            if remaining is not None and not self.whole_turns:
                turns = min(turns, max(1, remaining // q))
            if others is not None:
                turns = min(turns, max(1, (others - t0) // per_turn))
        # the clock: simulated time now, at the predicted rate (ending where the
        # prediction ends, which absorbs the last error), up to the next other turn
        start_ns = max(self.clock.ns(t0), last_vclock)
        rate = rate_between(start_ns, self.clock.ns(t0 + ticks * n * turns // insns), n * turns)
        cap = -1 if others is None else self.clock.ns(others)
        parked = sum(1 << u for u in range(self.model.ncores) if self.parked[u] and u < 64)
        return {"vcpu": v, "n": n, "turns": turns, "parked": parked,
                "clock": self.clock.ns(t0), "rate": rate, "cap": cap}

    def _continuation(self, v: int, report: Report, t0: int) -> dict | None:
        """The command after ``report`` if vCPU ``v`` simply goes on, else None.

        It is decided before the model has fed the report, from what the
        report says (counts, masks, the deadline) and the predicted end of
        the command (its start ``t0`` plus the rate prediction), so QEMU can
        run it while the model works. Whether it actually starts early does
        not change it: results are the same either way. ``v`` goes on when
        its last turn ran to its budget without halting, no parked vCPU got
        work, and no other vCPU is due within a turn of the predicted end;
        otherwise the next command is decided after the model, in
        simulated-time order.
        """
        if report.exited or not report.turn_list:
            return None
        last = report.turn_list[-1]
        if last.halted or last.executed < last.budget or v >= 64 \
                or (report.idle_mask >> v) & 1:
            return None
        if any(self._woken(v, report)):
            return None
        ticks, insns = self.pred[v]
        t1 = t0 + ticks * report.insns[v] // insns
        self.deadline_ns = report.deadline      # _observe sets the same
        others = self._next_other(v)
        if others is not None and others - t1 < max(1, ticks * self.quantum // insns):
            return None
        vclock = report.vclock if report.vclock >= 0 else self.last_vclock
        return self._decide(v, t1, vclock)

    def _feed(self, vcpu: int, records: np.ndarray | None, executed: int) -> int:
        """Run the core model over one turn's records; returns its ticks."""
        if records is None:
            records = _NO_RECORDS
        return core.run_turn(self.model.K, self.model.H, vcpu, records, executed)

    def _feed_report(self, v: int, report: Report) -> int:
        """Feed every turn of the report; returns when its last turn started (ticks)."""
        scal = self.model.K.scal
        turns: list[Turn] = report.turn_list
        start = int(scal[v, core.T_TIME])
        if len(turns) == 1:
            self._feed(turns[0].vcpu, turns[0].records, turns[0].executed)
        elif turns:
            # a batch is one vCPU's turns: one kernel call for all of them
            ticks = np.zeros(len(turns), dtype=np.int64)
            core.run_turns(self.model.K, self.model.H, v, *packed_turns(report), ticks)
            start = int(scal[v, core.T_TIME]) - int(ticks[-1])
        if report.exited and report.partial_vcpu >= 0:
            start = int(scal[v, core.T_TIME])
            self._feed(report.partial_vcpu, report.partial_records, report.partial_insns)
        self._epochs(self._decided_unsent(v))
        return start

    def _decided_unsent(self, v: int) -> bool:
        """Was a command decided before this report was fed, and is it still to be sent?"""
        return self._next_cmd[v] is not None and not self._in_flight

    def _epochs(self, deferred: bool) -> None:
        """Close the CHMU epochs and timeline intervals simulated time has passed (at a
        report boundary).

        ``deferred``: a command decided before this report was fed is still
        to be sent (see ``chmu_device``).
        """
        now = int(self.model.K.scal[:, core.T_TIME].max())
        if self.model.chmu is not None:
            self.model.chmu.advance(now, deferred, self._in_flight)
        if self.timeline is not None:
            self.timeline.sample(now)

    # -- what a report tells ------------------------------------------------

    def _observe(self, v: int, report: Report, t0: int, last_start: int, t1: int) -> None:
        """Rates, clock error, parking and wake-ups after vCPU ``v``'s command."""
        executed = report.insns[v] + (report.partial_insns if report.partial_vcpu == v else 0)
        if executed > 0 and t1 > t0:
            self.pred[v] = [t1 - t0, executed]
        if report.vclock >= 0:
            self.last_vclock = report.vclock
            ideal = self.clock.ns(t1)
            if self._cap_ns >= 0:
                ideal = min(ideal, self._cap_ns)
            err = report.vclock - ideal
            self.max_lead_ns = max(self.max_lead_ns, err)
            self.max_lag_ns = max(self.max_lag_ns, self.clock.ns(t1) - report.vclock)
            if self._turns > 1:
                self.max_batch_drift_ns = max(self.max_batch_drift_ns, abs(err))
        if report.exited:
            return
        for u, at_start in self._woken(v, report):
            # a timer due at the turn's start, or an interrupt during the turn
            self._wake(u, last_start if at_start else t1)
        if v < 64 and (report.idle_mask >> v) & 1:
            self.parked[v] = True
            self.wake_at[v] = -1
        self.deadline_ns = report.deadline
        last = report.turn_list[-1] if report.turn_list else None
        if not self.parked[v] and last is not None and not last.halted \
                and last.executed < last.budget:
            self._spin_wait(v, t1)
        self._retarget()

    def _woken(self, v: int, report: Report) -> Iterator[tuple[int, bool]]:
        """Parked vCPUs that ``v``'s report says have work: (vCPU, already at the start)."""
        for u in range(min(self.model.ncores, 64)):
            if u == v or not self.parked[u]:
                continue
            if not (report.start_idle_mask >> u) & 1:
                yield u, True
            elif not (report.idle_mask >> u) & 1:
                yield u, False

    def _spin_wait(self, v: int, t1: int) -> None:
        """A turn that ended at a spin-wait hint (x86 PAUSE) waits for another vCPU.

        What a spinning vCPU waits for (a lock, an IPI's answer) mostly
        comes from another vCPU's turn, so while another vCPU is runnable
        it sleeps until just after that one's next turn starts instead of
        spinning one short turn per round trip; the wait counts as idle
        time. With every other vCPU parked it spins on (a delay loop that
        reads the clock, for instance), in batches.
        """
        scal = self.model.K.scal
        others = min((int(scal[u, core.T_TIME]) if not self.parked[u] else self.wake_at[u]
                      for u in range(self.model.ncores)
                      if u != v and (not self.parked[u] or self.wake_at[u] >= 0)), default=None)
        if others is not None and others >= t1:
            wait = others + 1 - t1
            scal[v, core.T_IDLE] += wait
            scal[v, core.T_TIME] += wait

    def _wake(self, u: int, t: int) -> None:
        if self.wake_at[u] < 0 or t < self.wake_at[u]:
            self.wake_at[u] = t

    def _retarget(self) -> None:
        """Interrupt sleeping vCPUs whose wake-up time changed."""
        for u, proc in enumerate(self._procs):
            if self.parked[u] and proc.is_alive and proc.target is not None \
                    and self._target(u) != self._sleep_target[u] \
                    and proc is not self._env.active_process:
                proc.interrupt()

    @property
    def cycles(self) -> int:
        """Simulated cycles of the run: the latest core's local time."""
        return int(self.model.K.scal[:, core.T_TIME].max()) // TICKS_PER_CYCLE
