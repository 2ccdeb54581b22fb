"""QEMU runs a continuation while the model works: faster, and nothing else changes.

Real QEMU, guests and bridge. The engine decides a vCPU's next command
before the model has fed the report it follows, so starting that command
early (the overlap) is only a matter of speed: with it on and off, every
model counter, the guest's output (which reads its clock) and the trace
digest must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import guest
from cosim.boards import roi_addresses
from cosim.errors import CosimError
from cosim.libqflex_bridge import Bridge, QemuConfig
from cosim.quantum import Schedule
from cosim.timing import config as timing_config
from cosim.timing import engine, rounds, state, stats


def timing_run(kernel: str, smp: int, overlap: bool,
               order: str = "exact") -> tuple[dict, str, str, dict]:
    """(timing document, guest output, digest, engine counts) of one run."""
    path = guest(kernel)
    model = state.build(timing_config.load(None, None), smp, [(0x80000000, 256 << 20)],
                        roi=roi_addresses(path))
    sent = {"early": 0, "commands": 0}
    with Bridge(QemuConfig(kernel=path, smp=smp, quantum=1000, mode="trace", memory="256M",
                           clock="model")) as bridge:
        real_step, real_round = bridge.send_step, bridge.send_round

        def step(*a, **k) -> None:
            sent["commands"] += 1
            real_step(*a, **k)

        def round_(*a, **k) -> None:
            sent["commands"] += 1
            real_round(*a, **k)
        bridge.send_step = step  # type: ignore[method-assign]
        bridge.send_round = round_  # type: ignore[method-assign]
        cls = rounds.RoundRun if order == "round" else engine.TimingRun
        run = cls(bridge, Schedule(smp), model, overlap=overlap)
        run.run()
        sent["early"] = run.early_starts
        doc = stats.document(model, run.cycles, None, None, parked=run.parked)
        doc["clock"] = stats.clock_report(run)
        console = bridge.console_text()
        return doc, console, bridge.digest.hexdigest(), sent


@pytest.mark.parametrize("kernel,smp,order", [("pchase-ws1048576-it20000", 1, "exact"),
                                              ("spinlock-n400", 4, "exact"),
                                              ("stream-n64k-r2", 4, "round"),
                                              ("spinlock-n400", 4, "round")])
def test_overlap_changes_nothing_but_speed(kernel: str, smp: int, order: str) -> None:
    on = timing_run(kernel, smp, overlap=True, order=order)
    off = timing_run(kernel, smp, overlap=False, order=order)
    assert on[0] == off[0]
    assert on[1] == off[1] and "RESULT" in on[1]
    assert on[2] == off[2]
    assert on[3]["commands"] == off[3]["commands"]
    assert off[3]["early"] == 0
    if smp == 1:
        # a lone vCPU goes on command after command: nearly all start early
        assert on[3]["early"] >= on[3]["commands"] - 2 > 0
    if kernel.startswith("stream") and order == "round":
        # 4 busy harts go on round after round: most rounds start early
        assert on[3]["early"] >= on[3]["commands"] // 2 > 0


def test_finish_without_a_command_and_a_second_command_are_refused() -> None:
    with Bridge(QemuConfig(kernel=guest("stream"), smp=1, quantum=1000, mode="trace")) as bridge:
        with pytest.raises(CosimError, match="no command is running"):
            bridge.finish()
        bridge.send_step(0, 1000)
        with pytest.raises(CosimError, match="already running"):
            bridge.send_step(0, 1000)
        with pytest.raises(CosimError, match="pause"):
            bridge.pause()
        report = bridge.finish()
        assert report.insns == [1000]
        assert np.all(report.turn_list[0].records["idx"] < 1000)
