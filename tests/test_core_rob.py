"""The core kernel's reorder buffer when one instruction loads more often than it has entries.

``rep movsb`` copies a page as one x86 instruction: thousands of load
records carry the same instruction number. The reorder buffer's ring of
long operations used to grow past its ``rob`` entries then, writing beyond
the core's row of the model's arrays (past the array's end for the last
core): Python in the guest under ``--timing`` crashed the host process.
Unit test on the kernel alone with a synthetic trace (no QEMU).
"""

from __future__ import annotations

import numpy as np

from cosim.timing import config, core, state
from cosim.trace import KIND_LOAD, RECORD_DTYPE

RAM = [(0x80000000, 256 << 20)]
CORES = 2


def _copy_loads(n: int) -> np.ndarray:
    """``n`` loads of one instruction, each from its own line (all miss to memory)."""
    recs = np.zeros(n, dtype=RECORD_DTYPE)
    recs["kind"] = KIND_LOAD
    recs["addr"] = 0x80000000 + np.arange(n, dtype=np.uint64) * 4096
    recs["size"] = 8
    return recs


def test_one_instruction_with_more_long_loads_than_the_rob_stays_in_its_ring() -> None:
    model = state.build(config.load(), CORES, RAM)
    rob = int(model.K.params[core.C_ROB])
    last = CORES - 1
    rows = {name: getattr(model.K, name).copy() for name in ("fifo_idx", "fifo_done", "fifo_cat")}
    ticks = core.run_turn(model.K, model.H, last, _copy_loads(4 * rob), 1)
    assert 0 < model.K.scal[last, core.T_COUNT] <= rob
    for name, before in rows.items():
        # the other core's row is untouched (an overflow of core 0 would land there)
        assert np.array_equal(getattr(model.K, name)[0], before[0]), name
    # a full buffer waited for its oldest loads, and the wait is memory's in the CPI stack
    dram = int(model.K.cpi[last, core.CAT_DRAM])
    assert dram > 0 and ticks == int(model.K.params[core.C_CPI]) + dram


def test_a_buffer_that_never_fills_is_not_charged() -> None:
    """Fewer long loads than entries: the same ticks as before the fix (no stall added)."""
    model = state.build(config.load(), CORES, RAM)
    rob = int(model.K.params[core.C_ROB])
    ticks = core.run_turn(model.K, model.H, 0, _copy_loads(rob - 1), 1)
    assert model.K.scal[0, core.T_COUNT] == rob - 1
    assert ticks == int(model.K.params[core.C_CPI])
