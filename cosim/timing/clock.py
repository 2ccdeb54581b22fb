"""The guest's clock in simulated time: ticks <-> QEMU's virtual clock (ns).

Under ``--timing`` the timing model owns QEMU's virtual clock (qemu patch
0009, plugin ``clock=model``): every command to the bridge sets it to the
simulated time of the vCPU about to run, so the guest's TSC, HPET, LAPIC
timer, ACPI PM timer (x86) and mtime (riscv) all read simulated time.

Simulated time runs in ticks (1/1000 cycle) from 0 at the start of a
model; the guest's clock already had a value then (the boot of a fast-mode
snapshot, for instance), so ``offset_ns`` is the guest clock at tick 0 and
the guest clock never goes back. All arithmetic is on integers: the
frequency is taken in kHz, so ``ns`` and ``ticks`` are exact floors and
ceilings and a run's clock values are the same on every machine.
"""

from __future__ import annotations

from .memory import TICKS_PER_CYCLE

#: rate of the clock between two sets: ns per instruction, 16.16 fixed point
RATE_ONE = 1 << 16
RATE_MAX = (1 << 32) - 1


class GuestClock:
    """Conversions between simulated ticks and the guest's clock in ns."""

    def __init__(self, frequency_ghz: float, offset_ns: int) -> None:
        self.khz = round(frequency_ghz * 1_000_000)
        self.offset_ns = int(offset_ns)
        # ticks per ns, as the fraction num / den
        self._num = self.khz * TICKS_PER_CYCLE
        self._den = 1_000_000

    def ns(self, ticks: int) -> int:
        """The guest clock at simulated time ``ticks`` (floor)."""
        return self.offset_ns + ticks * self._den // self._num

    def ticks(self, ns: int) -> int:
        """The first simulated time at which the guest clock reads ``ns`` (ceiling)."""
        return -((self.offset_ns - ns) * self._num // self._den)


def rate_between(start_ns: int, end_ns: int, insns: int) -> int:
    """The clock rate (16.16 ns per instruction) that goes from ``start_ns`` to ``end_ns``."""
    if insns <= 0 or end_ns <= start_ns:
        return 0
    return min(RATE_MAX, (end_ns - start_ns) * RATE_ONE // insns)
