"""Trace records as the plugin writes them, and the run digest.

The plugin writes 16-byte records (``TraceRec`` in plugin/cosim.c) into a
shared-memory buffer; numpy reads them in place, so a turn's trace crosses
from C to Python without a per-access Python object.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

#: Mirrors ``TraceRec`` in plugin/cosim.c.
RECORD_DTYPE = np.dtype(
    [("addr", "<u8"), ("idx", "<u4"), ("kind", "u1"), ("size", "u1"), ("flags", "u1"), ("pad", "u1")]
)
assert RECORD_DTYPE.itemsize == 16

KIND_IFETCH, KIND_LOAD, KIND_STORE = 0, 1, 2
FLAG_IO, FLAG_VIRT = 1, 2
# flags bits 2-4: distance (1..4) of the earlier load whose value is this
# load's address (pointer chasing); 0 when independent
FLAG_DEP_SHIFT, FLAG_DEP_MASK = 2, 0x1C

_TURN = struct.Struct("<iQQ?")


class RunDigest:
    """BLAKE2b over every turn outcome and every trace record, in order.

    Two runs with the same digest executed the same turns (vCPU, budget,
    instructions, halt) and, in trace mode, made the same memory accesses
    and instruction fetches at the same instruction indices.
    """

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def turn(self, vcpu: int, budget: int, executed: int, halted: bool) -> None:
        self._h.update(_TURN.pack(vcpu, budget, executed, halted))

    def batch(self, insns: list[int], turns: list[int], halted: list[int]) -> None:
        """Fast mode sees batches of turns, not single turns."""
        self._h.update(struct.pack(f"<{3 * len(insns)}Q", *insns, *turns, *halted))

    def records(self, buf: memoryview) -> None:
        self._h.update(buf)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
