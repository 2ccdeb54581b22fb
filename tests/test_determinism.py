"""Identical runs give identical counts, digests and guest results."""

from __future__ import annotations

import random
import threading

import pytest

from conftest import cosim_json, open_bridge
from cosim.quantum import Schedule, run_round_robin

GUESTS = ["spinlock", "atomic", "false_sharing"]
RUNS = 10


def fingerprint(out: dict) -> tuple:
    return (tuple(v["insns"] for v in out["vcpus"]), tuple(v["turns"] for v in out["vcpus"]),
            out["digest"], tuple(out["guest_results"]))


@pytest.mark.parametrize("kernel", GUESTS)
def test_ten_runs_identical(kernel: str) -> None:
    args = ("--kernel", kernel, "--smp", "4", "--quantum", "1000", "--mode", "trace")
    first = cosim_json(*args)
    assert first["guest_results"], "guest printed no RESULT line"
    for _ in range(RUNS - 1):
        assert fingerprint(cosim_json(*args)) == fingerprint(first)




@pytest.mark.parametrize("kernel", GUESTS)
def test_identical_under_cpu_load(kernel: str, other_core_busy: None) -> None:
    args = ("--kernel", kernel, "--smp", "4", "--quantum", "1000", "--mode", "trace")
    baseline = fingerprint(cosim_json(*args))
    for _ in range(3):
        assert fingerprint(cosim_json(*args)) == baseline


def run_with_monitor_noise(kernel: str, noise: bool) -> tuple:
    """Run in fast mode (QEMU free-runs whole batches) while a thread sends
    QMP and HMP commands at irregular moments, kicking the vCPU thread."""
    sent = 0
    with open_bridge(kernel, quantum=1000, mode="fast") as bridge:
        schedule = Schedule(4)
        stop = threading.Event()

        def pester() -> None:
            nonlocal sent
            rng = random.Random()
            while not stop.is_set():
                try:
                    bridge.qmp("query-status")
                    bridge.hmp("info registers", cpu=rng.randrange(4))
                    sent += 2
                except Exception:
                    return  # QEMU exited under us: the run is over
                stop.wait(rng.uniform(0.0, 0.003))

        thread = threading.Thread(target=pester)
        if noise:
            bridge.qmp("query-status")  # connect before the run starts
            thread.start()
        run_round_robin(bridge, schedule)
        stop.set()
        if noise:
            thread.join()
        result = (tuple(schedule.insns), tuple(schedule.turns), bridge.digest.hexdigest(),
                  bridge.console_text())
    if noise:
        assert sent > 10, f"only {sent} monitor commands reached QEMU"
    return result


@pytest.mark.parametrize("kernel", ["spinlock", "false_sharing-n2000000"])
def test_identical_with_monitor_commands(kernel: str) -> None:
    quiet = run_with_monitor_noise(kernel, noise=False)
    for _ in range(3):
        assert run_with_monitor_noise(kernel, noise=True) == quiet
