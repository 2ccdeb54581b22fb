"""Round order (``--order round``): several vCPUs per round trip, same model, reproducible.

Real QEMU, guests and bridge. A round runs every vCPU due within a turn's
window in one command and the model feeds the turns in simulated-time
order, so the functional interleaving of vCPUs is the only difference
from the exact order: the cycle counts must stay close to the exact
order's, be identical from run to run, and rounds must really carry
several vCPUs' turns.
"""

from __future__ import annotations

import pytest

from conftest import guest
from cosim.boards import roi_addresses
from cosim.errors import CosimError
from cosim.libqflex_bridge import Bridge, QemuConfig
from cosim.quantum import Schedule
from cosim.timing import config as timing_config
from cosim.timing import engine, rounds, state, stats


def timing_run(kernel: str, smp: int, order: str) -> tuple[dict, str, str, dict]:
    """(timing document, guest output, digest, commands by kind) of one run."""
    path = guest(kernel)
    model = state.build(timing_config.load(None, None), smp, [(0x80000000, 256 << 20)],
                        roi=roi_addresses(path))
    sent = {"step": 0, "round": 0, "round_turns": 0}
    with Bridge(QemuConfig(kernel=path, smp=smp, quantum=1000, mode="trace", memory="256M",
                           clock="model")) as bridge:
        real_step, real_round = bridge.send_step, bridge.send_round

        def step(*a, **k) -> None:
            sent["step"] += 1
            real_step(*a, **k)

        def round_(n: list[int], turns: list[int], **k) -> None:
            sent["round"] += 1
            sent["round_turns"] += sum(turns)
            real_round(n, turns, **k)
        bridge.send_step = step  # type: ignore[method-assign]
        bridge.send_round = round_  # type: ignore[method-assign]
        cls = rounds.RoundRun if order == "round" else engine.TimingRun
        run = cls(bridge, Schedule(smp), model)
        run.run()
        doc = stats.document(model, run.cycles, None, None, parked=run.parked)
        doc["clock"] = stats.clock_report(run)
        doc["skew"] = run.max_time_skew
        return doc, bridge.console_text(), bridge.digest.hexdigest(), sent


@pytest.mark.parametrize("kernel", ["stream", "false_sharing-n2500"])
def test_round_order_is_reproducible_and_close_to_the_exact_order(kernel: str) -> None:
    first = timing_run(kernel, 4, "round")
    again = timing_run(kernel, 4, "round")
    exact = timing_run(kernel, 4, "exact")
    assert first[0] == again[0] and first[2] == again[2] and first[1] == again[1]
    assert "RESULT" in first[1]
    # the guests' results do not depend on the interleaving
    assert [l for l in first[1].splitlines() if l.startswith("RESULT")] == \
        [l for l in exact[1].splitlines() if l.startswith("RESULT")]
    # rounds carried the 4 harts' turns: several turns per round trip
    assert first[3]["round"] > 0 and first[3]["round_turns"] >= 3 * first[3]["round"]
    assert first[3]["round"] + first[3]["step"] < exact[3]["step"] / 3
    cycles, exact_cycles = first[0]["cycles"], exact[0]["cycles"]
    assert abs(cycles - exact_cycles) <= 0.05 * exact_cycles, (cycles, exact_cycles)


def test_bad_rounds_are_refused() -> None:
    with Bridge(QemuConfig(kernel=guest("stream"), smp=2, quantum=1000, mode="trace")) as bridge:
        with pytest.raises(CosimError, match="need 2 entries"):
            bridge.send_round([1000], [1])
        with pytest.raises(CosimError, match="a vCPU with both > 0"):
            bridge.send_round([0, 0], [1, 1])
        with pytest.raises(CosimError, match="needs QemuConfig.clock='model'"):
            bridge.send_round([1000, 1000], [1, 1], clock=[0, 0], rate=[0, 0], cap=[-1, -1])
        bridge.send_round([1000, 1000], [1, 2])
        report = bridge.finish()
        assert report.insns == [1000, 2000]
        assert [t.vcpu for t in report.turn_list] == [0, 1, 1]
