"""The quantum decides the interleaving: the lock order follows Q."""

from __future__ import annotations

from conftest import cosim_json


def lock_order(quantum: int) -> str:
    out = cosim_json("--kernel", "spinlock", "--smp", "4", "--quantum", str(quantum))
    (line,) = out["guest_results"]
    return line


def test_lock_order_depends_on_quantum_and_is_stable() -> None:
    q10 = lock_order(10)
    q1000 = lock_order(1000)
    assert q10 != q1000
    assert lock_order(10) == q10
    assert lock_order(1000) == q1000
