"""Trace records as the plugin writes them, and the run digest.

The plugin writes 16-byte records (``TraceRec`` in plugin/cosim.c) into a
shared-memory buffer; numpy reads them in place, so a turn's trace crosses
from C to Python without a per-access Python object.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Callable, Protocol

import numpy as np
import xxhash

from .errors import CosimError

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


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> "_Hash": ...
    def hexdigest(self) -> str: ...


#: 16-byte hashes a chain can use, by the name a snapshot records. XXH3 is
#: the default because every trace record passes through it on the model's
#: host core: about 1 ns per 16-byte record against BLAKE2b's 15-22 ns.
#: It need not resist forgery, only tell runs apart. BLAKE2b stays so that
#: snapshots saved before the change continue with the chain they began.
HASHES: dict[str, Callable[[], _Hash]] = {
    "xxh3_128": xxhash.xxh3_128,
    "blake2b": lambda: hashlib.blake2b(digest_size=16),
}
DEFAULT_HASH = "xxh3_128"


class RunDigest:
    """A hash chain (XXH3-128) over every turn outcome and every trace record.

    Two runs with the same digest executed the same turns (vCPU, budget,
    instructions, halt) and, in trace mode, made the same memory accesses
    and instruction fetches at the same instruction indices.

    Why a chain and not one running hash: a snapshot must carry the digest
    so that a restored run ends with the digest of the straight run, and a
    running hashlib object cannot be saved. Each block is hashed with the
    previous block's digest in front; between blocks the whole state is
    that 16-byte value. Trace mode closes a block at every turn end. Fast
    mode sees batches, not turns, so it sums the batches and closes a block
    every ``block_turns`` turns counted from boot; the bridge never lets a
    batch cross such a boundary, so the blocks do not depend on how the
    run was batched, paused or split by a snapshot.
    """

    def __init__(self, block_turns: int = 1) -> None:
        self.block_turns = block_turns
        self.hash_name = DEFAULT_HASH
        self._chain = bytes(16)
        self._h = self._new()
        self._open = False              # records absorbed since the last turn end
        self.turns = 0                  # fast mode: turns summed since boot
        self._pending: list[int] = []   # fast mode: insns, turns, halted of the open block

    def turn(self, vcpu: int, budget: int, executed: int, halted: bool) -> None:
        self._h.update(_TURN.pack(vcpu, budget, executed, halted))
        self._close()

    def batch(self, insns: list[int], turns: list[int], halted: list[int]) -> None:
        """Fast mode: one report's per-vCPU deltas."""
        deltas = [*insns, *turns, *halted]
        if not self._pending:
            self._pending = [0] * len(deltas)
        self._pending = [a + b for a, b in zip(self._pending, deltas)]
        before = self.turns
        self.turns += sum(turns)
        if self.turns // self.block_turns != before // self.block_turns:
            if self.turns % self.block_turns:
                raise AssertionError("a fast-mode batch crossed a digest block boundary")
            self._flush_pending()

    def records(self, buf: memoryview) -> None:
        if len(buf):
            self._h.update(buf)
            self._open = True

    def hexdigest(self) -> str:
        h = self._h.copy()
        if self._pending:
            h.update(struct.pack(f"<{len(self._pending)}Q", *self._pending))
        return h.hexdigest()

    def turns_to_boundary(self) -> int:
        """Fast mode: turns left in the open block (the longest batch allowed)."""
        return self.block_turns - self.turns % self.block_turns

    def state(self) -> dict:
        """The chain between turns, for a snapshot."""
        if self._open:
            raise AssertionError("digest state taken in the middle of a turn")
        return {"chain": self._chain, "turns": self.turns, "pending": list(self._pending),
                "hash": self.hash_name}

    def load(self, state: dict) -> None:
        """Continue a saved chain with the hash it was begun with (older snapshots: BLAKE2b)."""
        name = state.get("hash", "blake2b")
        if name not in HASHES:
            raise CosimError(f"the snapshot's run digest uses an unknown hash {name!r} "
                             f"(known: {', '.join(HASHES)}); it was saved by a newer cosim")
        self.hash_name = name
        self._chain = bytes(state["chain"])
        self._h = self._new()
        self._open = False
        self.turns = int(state["turns"])
        self._pending = [int(x) for x in state["pending"]]

    def _flush_pending(self) -> None:
        self._h.update(struct.pack(f"<{len(self._pending)}Q", *self._pending))
        self._pending = []
        self._close()

    def _new(self) -> _Hash:
        """A block's hash, begun with the previous block's digest."""
        h = HASHES[self.hash_name]()
        h.update(self._chain)
        return h

    def _close(self) -> None:
        self._chain = self._h.digest()
        self._h = self._new()
        self._open = False
