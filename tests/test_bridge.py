"""The bridge API on a real QEMU: directed steps, reads, pause, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from elftools.elf.elffile import ELFFile

from conftest import REPO, guest, open_bridge, qemu_pids
from cosim.errors import CosimError
from cosim.quantum import Schedule, step
from cosim.trace import KIND_IFETCH, KIND_LOAD, KIND_STORE


def test_directed_steps_advance_only_the_named_vcpu() -> None:
    with open_bridge("spinlock", quantum=1000, mode="fast") as bridge:
        schedule = Schedule(4)
        step(bridge, schedule, 2, 500)
        assert schedule.insns == [0, 0, 500, 0]
        step(bridge, schedule, 0, 1234)
        step(bridge, schedule, 2, 1)
        assert schedule.insns == [1234, 0, 501, 0]
        assert schedule.max_skew == 1234
        assert schedule.qemu_icount == 1735


def test_trace_records_describe_the_turn() -> None:
    with open_bridge("stream", quantum=1000, mode="trace") as bridge:
        report = bridge.rr(400)
        assert [t.vcpu for t in report.turn_list[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
        kinds: set[int] = set()
        for turn in report.turn_list:
            trace = turn.records
            assert trace is not None and len(trace) > 0
            assert int(trace["idx"][0]) == 0
            assert int(trace["idx"].max()) < 1000
            assert (trace["idx"][1:] >= trace["idx"][:-1]).all(), "records are in program order"
            kinds |= set(trace["kind"].tolist())
        assert {KIND_IFETCH, KIND_LOAD, KIND_STORE} <= kinds


def test_registers_and_memory_reads() -> None:
    elf_path = guest("spinlock")
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        text = next(s for s in elf.iter_sections() if s.name == ".text")
        expected = text.data()[:64]
        text_addr = text["sh_addr"]
    with open_bridge("spinlock", quantum=1000, mode="fast") as bridge:
        bridge.rr(4)
        regs = bridge.registers(1)
        assert 0x80000000 <= regs["pc"] < 0x90000000
        assert bridge.read_memory(text_addr, 64) == expected


def test_pause_and_resume_at_round_boundary() -> None:
    with open_bridge("spinlock", quantum=1000, mode="fast") as bridge:
        schedule = Schedule(4)
        schedule.account(bridge.rr(8))
        bridge.pause()
        assert bridge.qmp("query-status")["status"] == "paused"
        bridge.resume()
        schedule.account(bridge.rr(4))
        assert schedule.insns == [3000, 3000, 3000, 3000]


def test_qemu_crash_gives_one_line_error_with_stderr_tail() -> None:
    with open_bridge("spinlock", quantum=1000, mode="fast") as bridge:
        bridge.rr(4)
        os.kill(bridge.pid, signal.SIGKILL)
        with pytest.raises(CosimError) as err:
            for _ in range(1000):
                bridge.rr(4)
    assert "\n" not in str(err.value)
    assert "QEMU" in str(err.value)


def test_stopped_qemu_is_one_line_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP QEMU mid-run: the bridge gives up after its deadline with one line."""
    from cosim import libqflex_bridge
    monkeypatch.setattr(libqflex_bridge, "ANSWER_DEADLINE_S", 2.0)
    before = qemu_pids()
    with open_bridge("spinlock", quantum=1000, mode="fast") as bridge:
        bridge.rr(4)
        os.kill(bridge.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(CosimError) as err:
            bridge.rr(4)
    assert time.monotonic() - started < 30
    assert "\n" not in str(err.value) and "stopped answering" in str(err.value)
    assert qemu_pids() - before == set()


def test_killed_bridge_leaves_no_qemu() -> None:
    """SIGKILL the cosim process mid-run: QEMU must not outlive it."""
    before = qemu_pids()
    proc = subprocess.Popen([sys.executable, "-m", "cosim.cli", "run", "--kernel", "stream",
                             "--quantum", "1", "--mode", "trace"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (qemu_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_pids() - before, "QEMU never started"
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while qemu_pids() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_pids() - before == set()


def test_close_mid_run_stops_qemu() -> None:
    before = qemu_pids()
    bridge = open_bridge("stream", quantum=1000, mode="trace").start()
    bridge.rr(1)
    bridge.close()
    assert qemu_pids() - before == set()


def test_digest_does_not_depend_on_buffer_size_or_batching() -> None:
    """A tiny shared buffer forces mid-turn chunks; turns then arrive split."""
    from cosim.libqflex_bridge import Bridge, QemuConfig
    from cosim.quantum import run_round_robin

    def digest(shm_records: int, per_turn: bool) -> tuple[str, list[int]]:
        config = QemuConfig(kernel=guest("stream-n2048-r2"), smp=4, quantum=1000,
                            mode="trace", shm_records=shm_records)
        with Bridge(config) as bridge:
            schedule = Schedule(4)
            if per_turn:
                while not schedule.exited:
                    schedule.account(bridge.rr(1))
            else:
                run_round_robin(bridge, schedule)
            return bridge.digest.hexdigest(), schedule.insns

    reference = digest(1 << 20, per_turn=False)
    assert digest(300, per_turn=False) == reference
    assert digest(1 << 20, per_turn=True) == reference
