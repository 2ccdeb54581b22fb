"""Progress of a long run: a live line on a terminal, plain log lines otherwise.

The live line is tqdm (instructions, rate, ETA when a limit is given) with
MIPS and simulated time as postfix; off a terminal (CI logs, pipes) a line
goes to stderr every ``LOG_EVERY_S`` seconds instead, so logs stay
readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LOG_EVERY_S = 10.0
LIVE_EVERY_S = 0.5


class Progress:
    """Report instructions done, MIPS and simulated time as a run advances."""

    def __init__(self, total: int | None, start: int = 0, stream: TextIO = sys.stderr,
                 live: bool | None = None) -> None:
        self.total = total
        self.start = start
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._t0 = time.monotonic()
        self._last = self._t0
        self._done = start
        self._bar = None
        if self.live:
            self._bar = tqdm(total=total, initial=0, unit="insn", unit_scale=True, file=stream,
                             leave=False, dynamic_ncols=True, mininterval=LIVE_EVERY_S)

    def update(self, done: int, sim_seconds: float | None = None) -> None:
        """``done``: instructions since boot; ``sim_seconds``: simulated time, if modelled."""
        delta, self._done = done - self._done, done
        now = time.monotonic()
        run = done - self.start
        mips = run / (now - self._t0) / 1e6 if now > self._t0 else 0.0
        if self._bar is not None:
            self._bar.update(delta)
            if now - self._last >= LIVE_EVERY_S:
                post = {"MIPS": f"{mips:.1f}"}
                if sim_seconds is not None:
                    post["sim"] = _time(sim_seconds)
                self._bar.set_postfix(post, refresh=False)
                self._last = now
        elif now - self._last >= LOG_EVERY_S:
            self._last = now
            line = f"[cosim] {run:,} instructions"
            if self.total:
                line += f" of {self.total:,} ({100 * run / self.total:.0f}%)"
            line += f", {mips:.1f} MIPS"
            if sim_seconds is not None:
                line += f", {_time(sim_seconds)} simulated"
            if self.total and run and mips > 0:
                line += f", ETA {(self.total - run) / (mips * 1e6):.0f} s"
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


class SweepProgress:
    """Points of a sweep finished, failed and running, with the ETA.

    On a terminal a live tqdm bar; off one, a line per finished point (and
    every ``LOG_EVERY_S`` seconds while none finishes), as ``Progress`` does.
    The ETA is from this run's own pace: points done by an earlier run count
    as finished but not as speed.
    """

    def __init__(self, total: int, earlier: int, stream: TextIO = sys.stderr,
                 live: bool | None = None) -> None:
        self.total, self.earlier, self.stream = total, earlier, stream
        self.live = stream.isatty() if live is None else live
        self._t0 = self._last = time.monotonic()
        self._seen = -1
        self._bar = None
        if self.live:
            self._bar = tqdm(total=total, initial=earlier, unit="point", desc="cosim sweep",
                             file=stream, dynamic_ncols=True)

    def update(self, done: int, failed: int, running: int) -> None:
        """Counts of this run's points: ``done`` and ``failed`` so far, ``running`` now."""
        finished = self.earlier + done + failed
        if self._bar is not None:
            self._bar.set_postfix(done=self.earlier + done, failed=failed, running=running,
                                  refresh=False)
            self._bar.update(finished - self._bar.n)
            self._bar.refresh()
            return
        now = time.monotonic()
        if finished == self._seen and now - self._last < LOG_EVERY_S:
            return
        self._seen, self._last = finished, now
        line = (f"[cosim sweep] {finished}/{self.total} points ({self.earlier} from an earlier "
                f"run), {failed} failed, {running} running")
        if done + failed and finished < self.total:
            per_point = (now - self._t0) / (done + failed)
            line += f", ETA {per_point * (self.total - finished):.0f} s"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
