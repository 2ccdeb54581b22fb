"""Every turn executes exactly Q instructions unless it halts or the guest exits."""

from __future__ import annotations

import pytest

from conftest import cosim_json, open_bridge
from cosim.quantum import Schedule, run_round_robin

# (quantum, guest, instruction limit): tiny guests keep Q=1 and Q=7, one
# bridge round trip per turn in trace mode, to a few seconds.
CASES = [
    (1, "spinlock-n200", 60_000),
    (7, "spinlock-n200", None),
    (1000, "spinlock", None),
    (100000, "stream", None),
]


@pytest.mark.parametrize("quantum,kernel,limit", CASES)
def test_every_turn_is_exact_in_trace_mode(quantum: int, kernel: str, limit: int | None) -> None:
    turns = exact = halted = 0
    schedule = Schedule(4)
    with open_bridge(kernel, quantum=quantum, mode="trace") as bridge:
        def check(report) -> None:
            nonlocal turns, exact, halted
            # QEMU's icount after each turn equals the per-vCPU counts so far
            running = schedule.total - sum(report.insns) - report.partial_insns
            assert len(report.turn_list) == report.turns
            for turn in report.turn_list:
                assert 0 < turn.budget <= quantum
                running += turn.executed
                assert turn.icount == running
                if turn.halted:
                    halted += 1
                    assert turn.executed <= turn.budget
                else:
                    assert turn.executed == turn.budget, turn
                    # the plugin's own inline count agrees with QEMU's icount
                    assert turn.counted == turn.executed, turn
                    exact += 1
                turns += 1

        run_round_robin(bridge, schedule, max_insns=limit, on_report=check)
    assert turns > 0 and exact > 0
    assert schedule.short_turns == 0
    assert schedule.count_mismatches == 0
    assert schedule.icount_drift == 0
    if limit is not None:
        assert schedule.total == limit
    else:
        assert schedule.exited
    # full turns are exactly Q (the last turns before a limit may be shorter)
    assert exact * quantum <= schedule.total


@pytest.mark.parametrize("quantum", [1, 7, 1000, 100000])
def test_fast_mode_turns_are_exact(quantum: int) -> None:
    kernel = "spinlock-n200" if quantum < 100 else "spinlock"
    out = cosim_json("--kernel", kernel, "--smp", "4", "--quantum", str(quantum))
    assert out["stopped_by"] == "guest-exit"
    assert out["guest_exit_code"] == 0
    assert out["short_turns"] == 0
    assert out["count_mismatches"] == 0
    assert out["icount_drift"] == 0
    # (icount_drift above compares the per-vCPU counts with QEMU's own icount at
    # every report; the total is their sum, so it needs no check of its own)
    # no vCPU ran more than its turns' budgets (the turn the guest exits in is cut
    # short and not counted)
    assert all(0 < v["insns"] <= (v["turns"] + 1) * quantum for v in out["vcpus"])
    # QEMU's icount at the last turn boundary plus the final partial turn
    assert out["qemu_icount"] <= out["total_insns"]


def test_max_insns_is_exact() -> None:
    out = cosim_json("--kernel", "spinlock", "--quantum", "1000", "--max-insns", "123457")
    assert out["total_insns"] == 123457
    assert out["qemu_icount"] == 123457
    assert out["stopped_by"] == "max-insns"
