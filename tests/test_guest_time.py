"""Acceptance: under --timing the guest lives in simulated time (real QEMU, guests, bridge).

What the guest measures of itself with its own clock (riscv ``rdtime``,
x86 ``clock_gettime``) must be what the timing model charged; a sleeping
guest must take the simulated time it asked for; the clock, the parking of
idle vCPUs and the batching must leave runs bit-identical, with or without
load on the other host core, and across a save and restore mid-workload.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import busy_other_core, cosim_json, linux_run
from cosim.timing import config as timing_config

GHZ = timing_config.load(None, None).core.frequency_ghz


def guest_figure(results: list[str], key: str) -> float:
    """``key=X`` from the guest's RESULT lines."""
    for line in reversed(results):
        m = re.search(rf"\b{key}=([\d.]+)", line)
        if m:
            return float(m.group(1))
    raise AssertionError(f"no {key}= in {results}")


# -- riscv bare metal (rdtime) -------------------------------------------------

RISCV_CHASE = "pchase-ws33554432-it50000"


def riscv_chase(*extra: str) -> tuple[float, float, dict]:
    """(guest ns per load by rdtime, model ns per load of the ROI, summary)."""
    out = cosim_json("--kernel", RISCV_CHASE, "--smp", "1", "--memory", "256M", "--timing",
                     *extra)
    guest = guest_figure(out["guest_results"], "ns_per_load")
    loads = guest_figure(out["guest_results"], "loads")
    model = out["timing"]["roi"]["cycles"] / loads / GHZ
    return guest, model, out


def test_riscv_guest_clock_measures_the_modelled_latency() -> None:
    guest, model, first = riscv_chase()
    assert abs(guest - model) <= 0.10 * model, (guest, model)
    cxl_guest, cxl_model, _ = riscv_chase("--preset", "cxl-direct")
    assert abs(cxl_guest - cxl_model) <= 0.10 * cxl_model, (cxl_guest, cxl_model)
    assert cxl_guest >= 1.8 * guest, (cxl_guest, guest)
    _, _, again = riscv_chase()
    assert again["guest_results"] == first["guest_results"]
    assert again["timing"] == first["timing"]


def five_runs(run) -> dict:
    """Two runs on a quiet machine, three with the other host core busy: all identical."""
    first = run()
    again = [run()]
    with busy_other_core():
        again += [run() for _ in range(3)]
    for r in again:
        assert r["timing"] == first["timing"] and r["digest"] == first["digest"]
        assert r["guest_results"] == first["guest_results"]
    return first


def test_riscv_timing_document_identical_five_runs() -> None:
    """4 harts that halt and wake each other (rt_yield: WFI on a self-IPI) and park at exit."""
    args = ("--kernel", "spinlock-n4000", "--smp", "4", "--timing")
    first = five_runs(lambda: cosim_json(*args))
    assert first["guest_results"], "guest printed no RESULT line"
    assert sum(v["halted_turns"] for v in first["vcpus"]) > 0


def test_restored_fast_snapshot_continues_from_its_clock(tmp_path: Path) -> None:
    """Simulated time starts where the fast-mode (icount: 1 ns per instruction) clock was."""
    d = ("--snapshot-dir", str(tmp_path))
    saved = cosim_json("--kernel", "gups-ws1m-n20000", "--smp", "1", "--max-insns", "300000",
                       "--save", "fast", *d)
    out = cosim_json("--snapshot", "fast", "--timing", *d)
    clock = out["timing"]["clock"]
    assert clock["guest_clock_start_ns"] == saved["total_insns"]
    assert clock["guest_clock_ns"] > clock["guest_clock_start_ns"]
    assert abs(clock["guest_elapsed_s"] - out["timing"]["seconds"]) < 1e-4, clock


# -- x86 Linux (clock_gettime) ---------------------------------------------------

CHASE = ("--workload", "pchase", "--timing")


def linux_chase(root: Path, node: int, steps: int) -> dict:
    return linux_run(root, "boot_done", *CHASE, "--args", f"-s 32M -n {steps}",
                     "--numa", f"membind={node}")


def test_linux_guest_clock_measures_the_modelled_latency(linux_plain) -> None:
    root, _ = linux_plain
    guest, model = {}, {}
    for node in (0, 1):
        short, long = linux_chase(root, node, 100_000), linux_chase(root, node, 200_000)
        # the model's own figure for the loop: the cycles 100k more loads cost
        model[node] = (long["cycles"] - short["cycles"]) / 100_000 / GHZ
        guest[node] = guest_figure(long["guest_results"], "ns_per_load")
        assert abs(guest[node] - model[node]) <= 0.10 * model[node], (node, guest, model)
        if node == 1:
            again = linux_chase(root, node, 200_000)
            assert again["guest_results"] == long["guest_results"]
            assert again["timing"] == long["timing"]
    assert guest[1] >= 1.8 * guest[0], guest


def test_linux_sleep_takes_simulated_seconds(linux_plain) -> None:
    root, _ = linux_plain
    nap = {s: linux_run(root, "boot_done", "--workload", "nap", "--args", s, "--timing")
           for s in ("0", "1")}
    clock = {s: r["timing"]["clock"] for s, r in nap.items()}
    took = clock["1"]["sim_elapsed_s"] - clock["0"]["sim_elapsed_s"]
    assert abs(took - 1.0) <= 0.001, took
    slept = guest_figure(nap["1"]["guest_results"], "slept_ns")
    assert abs(slept - 1e9) <= 1e6, slept
    for r in nap.values():
        assert r["workload_exit_code"] == 0
        c = r["timing"]["clock"]
        # the guest clock ends where simulated time does, within a turn
        assert abs(c["guest_elapsed_s"] - c["sim_elapsed_s"]) < 1e-4, c
    # the sleeping vCPU is parked, not stepped: far fewer turns than a second of quanta
    assert nap["1"]["session_insns"] - nap["0"]["session_insns"] < 10_000_000


THREADS = ("--workload", "threads", "--args", "-t 2 -s 1M -n 5000", "--timing")


def test_linux_two_vcpus_identical_five_runs(linux_plain) -> None:
    root, _ = linux_plain
    first = five_runs(lambda: linux_run(root, "boot_done", *THREADS))
    assert first["workload_exit_code"] == 0


def test_linux_save_and_restore_mid_workload_continues_exactly(linux_plain) -> None:
    root, _ = linux_plain
    straight = linux_run(root, "boot_done", *THREADS)
    half = straight["session_insns"] // 2
    first = linux_run(root, "boot_done", *THREADS, "--max-insns", str(half), "--save", "mid")
    assert first["stopped_by"] == "max-insns"
    rest = linux_run(root, "mid", "--timing")
    assert rest["restored_from"] == "mid" and rest["stopped_by"] == "guest-exit"
    assert rest["timing"] == straight["timing"]
    assert rest["guest_results"] == straight["guest_results"]
    assert rest["total_insns"] == straight["total_insns"]
    assert rest["digest"] == straight["digest"]
