"""Acceptance: the Linux guest flow with the real patched QEMU, guest image and bridge.

One boot per machine (module fixtures): ``cosim boot`` to COSIM-READY and
save, then workloads restored from it through the command channel, under
the timing model. Checks what issue 5 asks: both NUMA nodes and a lower
memory tier for node 1 inside the guest, GUPS on node 1 slower per update
than on node 0 by a ratio in line with the configured latencies and
cycle-identical when repeated, the cxl-type3 path end to end, and one-line
errors that leave an existing snapshot untouched.
"""

from __future__ import annotations

import io
import re
import types
from pathlib import Path

import numpy as np
import pytest

from cosim import guest_image, linux_flow
from cosim import snapshot as snap
from cosim.libqflex_bridge import QemuConfig, Report
from cosim.session import RunSpec, Session
from cosim.timing import config as timing_config
from cosim.trace import FLAG_VIRT, KIND_IFETCH

from conftest import cosim, linux_boot, linux_run

GUPS_ARGS = "-s 16M -n 20000"


@pytest.fixture(scope="module")
def plain(linux_plain) -> tuple[Path, str]:
    return linux_plain


@pytest.fixture(scope="module")
def with_cxl(linux_cxl) -> tuple[Path, str]:
    return linux_cxl


def tiers(report: str) -> dict[int, int]:
    """node -> memory tier id, from init's lines ``TIER: memory_tierN nodes=0-1``."""
    out = {}
    for tier, nodes in re.findall(r"^TIER: memory_tier(\d+) nodes=([\d,-]+)", report, re.M):
        for part in nodes.split(","):
            lo, _, hi = part.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                out[n] = int(tier)
    return out


def test_boot_shows_both_nodes_and_a_lower_tier(plain):
    root, out = plain
    assert re.search(r"^NUMA: available: 2 nodes \(0-1\)", out, re.M), out
    assert re.search(r"^NUMA: node 1 cpus:\s*$", out, re.M), "node 1 must be CPU-less"
    t = tiers(out)
    assert t[1] > t[0], f"node 1 must be in a lower (higher-numbered) tier: {t}"
    m = snap.Store(root).load("boot_done").manifest
    assert m["guest"]["arch"] == "x86_64" and m["guest"]["board"]["node_bytes"] == [1 << 30] * 2
    # the Debian package versions the image was built from travel with the snapshot
    assert set(m["guest"]["packages"]) == {name for name, _ in guest_image.PINNED_PACKAGES}
    cfg = timing_config.load(None, None)
    assert m["guest"]["board"]["hmat_latency_ns"] == [round(cfg.dram.latency_ns),
                                                      round(cfg.cxl_latency_ns)]


def test_gups_on_cxl_node_is_slower_and_repeatable(plain):
    root, _ = plain
    runs = {node: linux_run(root, "boot_done", "--timing", "--workload", "gups",
                           "--args", GUPS_ARGS, "--numa", f"membind={node}")
            for node in (0, 1)}
    again = linux_run(root, "boot_done", "--timing", "--workload", "gups", "--args", GUPS_ARGS,
                     "--numa", "membind=1")
    assert again["cycles"] == runs[1]["cycles"] and again["digest"] == runs[1]["digest"]
    for node, r in runs.items():
        assert r["workload_exit_code"] == 0 and r["stopped_by"] == "guest-exit"
        assert any(line.startswith("RESULT gups") for line in r["guest_results"]), r
    mem0, mem1 = runs[0]["timing"]["memory"], runs[1]["timing"]["memory"]
    # bound to node 1 the table lives in CXL memory; bound to node 0 it does not
    assert mem1["cxl"]["reads"] > 10 * max(1, mem0["cxl"]["reads"])
    assert mem0["dram"]["reads"] > mem1["dram"]["reads"]
    cfg = timing_config.load(None, None)
    latency_ratio = cfg.cxl_latency_ns / cfg.dram.latency_ns
    ratio = runs[1]["cycles"] / runs[0]["cycles"]
    # the whole run (boot tail, numactl, table set-up, updates) slows down,
    # by more than nothing and by no more than the memory latency ratio
    assert 1.1 < ratio < latency_ratio, (ratio, latency_ratio)
    hot = runs[1]["timing"]["hot_pages"]["cxl"]
    assert hot and all(int(p["page"], 16) >= 1 << 30 for p in hot)


def test_cxl_type3_region_end_to_end(with_cxl):
    root, out = with_cxl
    assert re.search(r"^COSIM-CXL node=2 ", out, re.M), out
    r = linux_run(root, "boot_cxl", "--timing", "--workload", "gups", "--args", GUPS_ARGS,
                 "--numa", "membind=2")
    assert r["workload_exit_code"] == 0
    assert r["timing"]["memory"]["cxl"]["reads"] > 10 * max(1, r["timing"]["memory"]["dram"]["reads"] // 100)
    assert r["timing"]["hot_pages"]["cxl"], "the window's pages must be counted"


def test_bad_input_leaves_the_snapshot_untouched(plain, tmp_path):
    root, _ = plain
    before = snap.file_digest(root / "boot_done" / "manifest.json")
    for args, message in (
            (["run", "--snapshot", "boot_done", "--workload", "nosuch"],
             "--workload nosuch: not in the guest image"),
            (["run", "--snapshot", "boot_done", "--workload", "gups", "--numa", "membind=7"],
             "node 7 does not exist"),
            (["boot", "--save", "boot_done"], "snapshot boot_done already exists"),
            (["boot", "--save", "boot_done", "--force", "--add", "/bin/ls"],
             "/bin/ls"),
            (["boot", "--save", "boot_done", "--force", "--smp", "9"], "--smp 9")):
        proc = cosim(*args, "--snapshot-dir", str(root))
        assert proc.returncode == 2, (args, proc.stderr)
        line = proc.stderr.strip()
        assert line.startswith("cosim: error: ") and message in line and "\n" not in line, line
    assert snap.file_digest(root / "boot_done" / "manifest.json") == before
    assert snap.Store(root).load("boot_done").name == "boot_done"   # still verifies


def test_two_boots_are_identical(plain, tmp_path):
    """Booting again gives the same console, instruction count and digest."""
    root, _ = plain
    linux_boot(tmp_path, "again")
    first, second = (snap.Store(r).load(n).manifest for r, n in ((root, "boot_done"),
                                                                  (tmp_path, "again")))
    log = (tmp_path / "again.boot.log").read_text()
    assert log == (root / "boot_done.boot.log").read_text()
    assert re.search(r"^COSIM-READY [0-9a-f]{16}$", log, re.M)   # the marker carries the nonce
    assert (second["total_insns"], second["digest"]) == (first["total_insns"], first["digest"])


def test_mid_workload_save_and_restore_under_timing_matches_straight(plain):
    """Save part-way through a workload under --timing, restore in a fresh process, finish:
    the same cycles, per-core statistics, digest and results as one straight run."""
    root, _ = plain
    args = ("--timing", "--workload", "gups", "--args", GUPS_ARGS, "--numa", "membind=1")
    straight = linux_run(root, "boot_done", *args)
    half = straight["session_insns"] // 2          # --max-insns counts this run's
    first = linux_run(root, "boot_done", *args, "--max-insns", str(half), "--save", "mid-gups")
    try:
        assert first["stopped_by"] != "guest-exit" and not first["guest_results"]
        rest = linux_run(root, "mid-gups", "--timing")
    finally:
        snap.Store(root).remove("mid-gups")
    for key in ("cycles", "digest", "total_insns", "guest_results", "workload_exit_code"):
        assert rest[key] == straight[key], key
    assert rest["timing"]["cores"] == straight["timing"]["cores"]


def _run_command(root: Path, name: str, command: str, fetches: dict[str, int]) -> dict:
    """Restore ``name`` under --timing with a shell command of the test's own.

    ``cosim run`` only runs the image's workloads; this builds the same
    session in-process (real QEMU, guest and bridge) for a command that
    copies one first. ``fetches`` counts the instruction-fetch records the
    model is given: all, from node 1, and with a virtual address. Every
    report passes ``_on_progress`` once (``_on_report`` calls it; a report
    whose successor already runs goes to it alone), so that is where they
    are counted.
    """
    store = snap.Store(root)
    s = store.load(name)
    m = s.manifest
    board = linux_flow.board_of(s, command)
    (lo, size), = board.node_ranges(1)
    on_progress = Session._on_progress

    def count(session: Session, report: Report) -> None:
        if report.trace is not None:        # the records in one piece
            pieces = [report.trace[0]]
        else:
            pieces = [t.records for t in report.turn_list if t.records is not None]
        for records in pieces:
            f = records[records["kind"] == KIND_IFETCH]
            fetches["all"] += len(f)
            fetches["node1"] += int(np.count_nonzero((f["addr"] >= lo) & (f["addr"] < lo + size)))
            fetches["virtual"] += int(np.count_nonzero(f["flags"] & FLAG_VIRT))
        on_progress(session, report)

    machine = QemuConfig(kernel=Path(m["guest"]["kernel"]), smp=m["machine"]["smp"],
                         quantum=m["quantum"], memory=m["machine"]["memory"], mode="trace",
                         icount_shift=m["icount_shift"], board=board)
    spec = RunSpec(machine=machine, timing=timing_config.load(None, None), store=store,
                   snapshot=s, console=io.StringIO())
    session = Session(spec)
    session._on_progress = types.MethodType(count, session)
    summary = session.run()
    assert summary["workload_exit_code"] == 0, spec.console.getvalue()[-2000:]
    return summary


def test_instruction_fetches_reach_the_node_their_text_is_on(plain):
    """Fetch records carry guest-physical lines: text copied to node 1 is fetched from CXL.

    Both runs copy pchase to node 1 first (the same CXL traffic); one runs the
    copy, the other the original on node 0 (``fetches`` counts the records of
    the reports the session sees). Data is bound to node 0 in both,
    32 MiB of it, so that the text lines cp left in the caches are evicted
    before the code after the set-up runs. With virtual fetch lines (before
    QEMU patch 0010) no fetch record lay in node 1 in either run (user text
    is at 0x40xxxx, kernel text far above RAM).
    """
    root, _ = plain
    copy = "numactl --membind=1 -- cp /workloads/pchase /pchase1"
    work = "-s 32M -n 20000"
    fetches = [{"all": 0, "node1": 0, "virtual": 0} for _ in range(2)]
    on_cxl, on_dram = (_run_command(root, "boot_done",
                                    f"{copy} && numactl --membind=0 -- {exe} {work}", counts)
                       for exe, counts in zip(("/pchase1", "/workloads/pchase"), fetches))
    reads = [r["timing"]["memory"]["cxl"]["reads"] for r in (on_cxl, on_dram)]
    l1i = [sum(c["cpi_stack"]["l1i"] * c["instructions"] for c in r["timing"]["cores"])
           for r in (on_cxl, on_dram)]
    print(f"text on node 1 / node 0: fetch records {fetches[0]} / {fetches[1]}, CXL reads "
          f"{reads[0]:,} / {reads[1]:,}, L1I stall cycles {l1i[0]:,.0f} / {l1i[1]:,.0f}")
    assert fetches[0]["node1"] > 10_000 and fetches[1]["node1"] == 0
    assert fetches[0]["virtual"] == fetches[1]["virtual"] == 0 and fetches[1]["all"] > 100_000
    # the copy's fetches that miss the caches are served by CXL, and wait for it
    assert reads[0] > reads[1] and l1i[0] > l1i[1]
    sums = [m for r in on_cxl["guest_results"] + on_dram["guest_results"]
            for m in re.findall(r"^RESULT pchase .*checksum=(0x[0-9a-f]+)", r)]
    assert len(sums) == 2 and sums[0] == sums[1]
