"""The timing model on the real patched QEMU, plugin and guests.

Latency plateaus, bandwidth saturation, coherence, determinism of every
cycle count, and the golden regression files.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from conftest import cosim, cosim_json
from cosim import regress
from cosim.timing import config as timing_config

DEFAULTS = timing_config.load()


def timing(*args: str) -> dict:
    doc = cosim_json(*args, "--timing")
    assert doc["stopped_by"] == "guest-exit" and doc["guest_exit_code"] == 0
    return doc


@functools.cache
def cycles_per_load(ws: str, preset: str, loads: int) -> float:
    """Cycles per dependent load in pchase's region of interest (one hart)."""
    doc = timing("--kernel", f"pchase-ws{ws}-it{loads}-solo1", "--smp", "1", "--preset", preset)
    roi = doc["timing"]["roi"]
    assert roi is not None, "pchase marks its chase as the region of interest"
    return roi["cycles"] / loads


# 256 MiB (32x the LLC) so that the lines the ring's set-up left in the LLC
# are a small share of the 50k loads measured
PLATEAUS = [("4k", "l1", 100000), ("256k", "l2", 100000), ("4m", "llc", 100000),
            ("256m", "memory", 50000)]
MEMORY_TIER = {"dram-only": "dram", "cxl-direct": "cxl"}


@pytest.mark.parametrize("preset", MEMORY_TIER)
@pytest.mark.parametrize("ws,level,loads", PLATEAUS)
def test_pointer_chase_plateaus_match_configured_latency(ws: str, level: str, loads: int,
                                                         preset: str) -> None:
    key = MEMORY_TIER[preset] if level == "memory" else level
    expected = timing_config.load(preset).load_latencies()[key]
    measured = cycles_per_load(ws, preset, loads)
    assert abs(measured - expected) / expected < 0.05, (ws, key, measured, expected)


def test_cxl_to_dram_latency_ratio() -> None:
    cfg = timing_config.load("cxl-direct")
    dram = cycles_per_load("256m", "dram-only", 50000)
    cxl = cycles_per_load("256m", "cxl-direct", 50000)
    expected = cfg.load_latencies()["cxl"] / cfg.load_latencies()["dram"]
    assert abs(cxl / dram - expected) / expected < 0.05, (cxl, dram, expected)
    assert abs(cxl - cfg.load_latencies()["cxl"]) / cfg.load_latencies()["cxl"] < 0.05


@pytest.mark.parametrize("preset,tier", [("dram-only", "dram"), ("cxl-direct", "cxl")])
def test_stream_saturates_configured_bandwidth(preset: str, tier: str) -> None:
    cfg = timing_config.load(preset)
    doc = timing("--kernel", "stream-n1m-r2", "--smp", "4", "--preset", preset)
    t = doc["timing"]
    roi, mem = t["roi"], t["memory"][tier]
    # reads and writes share the channel (DRAM bus, CXL device media), each
    # at its own rate: the ceiling for this read/write mix
    if tier == "dram":
        rd, wr = cfg.dram.bandwidth_gbps, cfg.dram.write_bandwidth_gbps
    else:
        rd, wr = cfg.cxl_read_gbps, cfg.cxl_write_gbps
    ceiling = mem["bytes"] / (mem["read_bytes"] / rd + mem["write_bytes"] / wr)
    achieved = roi[f"{tier}_bandwidth_gbps"]
    assert abs(achieved - ceiling) / ceiling < 0.10, (achieved, ceiling)
    assert mem["queued_fraction"] > 0.5, "saturated: most requests queue"
    # the L2 stream prefetchers, not the reorder buffer, keep memory busy
    assert sum(c["prefetches"] for c in t["caches"] if c["level"] == "l2") > mem["reads"] / 2


@pytest.mark.parametrize("order", ["round", "exact"])
def test_false_sharing_costs_invalidations_and_cycles(order: str) -> None:
    # coherence is resolved at turn boundaries: a small quantum interleaves
    # the harts finely enough for the line to bounce
    args = ("--smp", "4", "--quantum", "10", "--order", order)
    shared = timing("--kernel", "false_sharing-n20000", *args)["timing"]
    padded = timing("--kernel", "false_sharing_padded-n20000", *args)["timing"]
    inval = lambda t: sum(c["invalidations"] for c in t["caches"])  # noqa: E731
    assert inval(shared) > 20 * max(inval(padded), 1)
    # the same instructions, but every store has to win the line back
    assert shared["roi"]["cycles"] > 3 * padded["roi"]["cycles"]
    # and the CPI stack says why (padded: only the start-up barrier's line)
    coherence = lambda t: [c["cpi_stack"]["coherence"] for c in t["cores"]]  # noqa: E731
    assert sum(coherence(shared)) / 4 > 1.0 > 100 * max(coherence(padded))
    if order == "exact":
        # one turn per round trip: every hart's stores bounce the line. Per
        # instruction of its ROI, not of its run: a hart that finishes first
        # spins at the closing barrier (cheap instructions that dilute its
        # whole-run CPI; measured: 1.38 M against 0.1 M of ROI)
        roi_insns = {c["core"]: c["instructions"] for c in shared["roi"]["cores"]}
        per_roi_insn = [c["cpi_stack"]["coherence"] * c["instructions"] / roi_insns[c["core"]]
                        for c in shared["cores"]]
        assert min(per_roi_insn) > 1.0, per_roi_insn


def full_timing_json(kernel: str, order: str) -> str:
    doc = timing("--kernel", kernel, "--smp", "4", "--quantum", "1000", "--preset", "interleave",
                 "--order", order)
    assert doc["timing"]["order"] == order
    return json.dumps(doc["timing"], sort_keys=True)


@pytest.mark.parametrize("order", ["round", "exact"])
def test_full_stats_identical_over_five_runs(order: str) -> None:
    first = full_timing_json("gups-ws1m-n20000", order)
    for _ in range(4):
        assert full_timing_json("gups-ws1m-n20000", order) == first


@pytest.mark.parametrize("order", ["round", "exact"])
def test_full_stats_identical_under_load(other_core_busy: None, order: str) -> None:
    quiet = full_timing_json("spinlock-n200", order)
    for _ in range(4):
        assert full_timing_json("spinlock-n200", order) == quiet


def test_default_order_is_round_and_a_restore_keeps_the_snapshots(tmp_path: Path) -> None:
    store = ("--snapshot-dir", str(tmp_path))
    base = ("--kernel", "spinlock-n200", "--smp", "4", "--max-insns", "100000", *store)
    assert timing(*base[:4])["timing"]["order"] == "round"
    for order in ("exact", "round"):
        saved = cosim_json(*base, "--timing", "--order", order, "--save", f"s-{order}")
        assert saved["timing"]["order"] == order
        restored = cosim_json("--snapshot", f"s-{order}", *store, "--timing")
        assert restored["timing"]["order"] == order


def test_regression_goldens_match() -> None:
    assert regress.check() == []


@pytest.mark.parametrize("section", ["l1d", "llc"])
def test_one_cycle_latency_change_fails_regression(tmp_path: Path, section: str) -> None:
    cfg = tmp_path / "plus1.toml"
    latency = getattr(DEFAULTS, section).latency
    cfg.write_text(f"[{section}]\nlatency = {latency + 1}\n")
    problems = regress.check(config=cfg, cases=[("pchase-ws16384-it10000", "dram-only")])
    assert problems, f"a one-cycle {section} latency change must change the cycle counts"
    assert problems[0].startswith("pchase-ws16384-it10000 x dram-only: ")
    assert "golden" in problems[0] and "now" in problems[0]


def test_plots_written(tmp_path: Path) -> None:
    cosim_json("--kernel", "gups-ws16384-n2048", "--smp", "2", "--timing",
               "--preset", "interleave", "--plot", str(tmp_path))
    for name in ("cpi_stack.png", "latency.png", "page_hotness.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_interleave_sends_traffic_to_both_tiers_and_lists_hot_cxl_pages() -> None:
    t = timing("--kernel", "gups-ws1m-n20000", "--smp", "2", "--preset", "interleave")["timing"]
    assert t["memory"]["dram"]["reads"] > 0 and t["memory"]["cxl"]["reads"] > 0
    hot = t["hot_pages"]["cxl"]
    assert hot and all(int(p["page"], 16) // 4096 % 2 == 1 for p in hot)
    assert hot == sorted(hot, key=lambda p: -(p["reads"] + p["writes"]))


@pytest.mark.parametrize("args,message", [
    (("--preset", "nope"), "--preset 'nope': unknown; presets: dram-only"),
    (("--mode", "fast"), "--mode fast: the timing model needs trace mode"),
])
def test_bad_timing_arguments(args: tuple, message: str) -> None:
    proc = cosim("run", "--kernel", "spinlock-n200", "--timing", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosim: error: ") and message in lines[0]


def test_bad_config_field_named_with_range(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[llc]\nways = 100\n")
    proc = cosim("config", "show", "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "cosim: error: config llc.ways = 100: must be an integer in 1..64"
    bad.write_text("[l2]\nsize = 3\n")
    proc = cosim("config", "show", "--config", str(bad))
    assert "unknown field l2.size; l2 has size_kib, ways, latency, replacement" in proc.stderr


def test_config_show_round_trips(tmp_path: Path) -> None:
    shown = cosim("config", "show", "--preset", "cxl-switch")
    assert shown.returncode == 0 and "switch_hops = 1" in shown.stdout
    assert "MICRO'23" in shown.stdout
    path = tmp_path / "cfg.toml"
    path.write_text(shown.stdout)
    again = cosim("config", "show", "--config", str(path))
    assert again.stdout.splitlines()[2:] == shown.stdout.splitlines()[2:]
