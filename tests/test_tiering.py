"""Acceptance: ``cosim tiering`` on the real Linux guest, patched QEMU, bridge and model.

hotcold (128 MiB, a 16 MiB hot set) starts after a filler took 98% of node
0's free memory, so most of it, the hot set included, lands on the CXL
node; each policy then runs from the same boot snapshot (booted with damo
in the guest, as ``cosim tiering`` boots it) in simulated time. NUMA
balancing's scan knobs are set short (as the lab notes set them), so that
its scanner acts within a fifth of a simulated second; DAMON runs with its
own default intervals (5 ms sampling, 100 ms aggregation).
"""

from __future__ import annotations

import json
import struct

from conftest import cosim

ARGS = ["--workload", "hotcold", "--args", "-s 128M -H 16M -n 16M", "--pressure", "0.98",
        "--set", "scan_delay_ms=10", "--set", "scan_period_min_ms=10",
        "--set", "scan_period_max_ms=50", "--set", "hot_threshold_ms=50", "--json"]


def tiering(root, *extra: str) -> tuple[dict, str]:
    proc = cosim("tiering", "--snapshot-dir", str(root), *ARGS, *extra, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_policies_side_by_side(linux_damo, tmp_path):
    """Each active policy moves pages to node 0; the CHMU promoter lowers the CXL share and
    raises hotcold's own throughput against static placement; the kernel's counters show
    NUMA balancing at work; damo runs as the lab notes run it; the timelines show the CXL
    share falling as pages are promoted; a policy run again gives the same row."""
    root, _ = linux_damo
    doc, console = tiering(root, "--plot", str(tmp_path / "plots"))
    rows = {r["policy"]: r for r in doc["policies"]}
    assert list(rows) == ["none", "numa-balancing", "damon", "chmu"]
    none, numab, damon, chmu = rows.values()
    checksums = {r["results"][-1].split("checksum=")[1] for r in rows.values()}
    assert len(checksums) == 1, "placement must not change the data"
    assert none["promoted"] == 0 and none["cxl_share"] > 0.3, none
    assert numab["vmstat"]["numa_hint_faults"] > 0 and numab["vmstat"]["pgpromote_success"] > 0
    for r in (numab, damon, chmu):
        assert r["promoted"] > 0, r["policy"]
        assert sum(r["migrations"]["promoted"]) > 0, r["policy"]
    assert chmu["cxl_share"] < none["cxl_share"]
    assert chmu["per_second"] > none["per_second"] and chmu["cycles"] < none["cycles"]

    # damo start FILE and damo show, in the guest; DAMON's own statistics in the row
    assert "kdamond 0 / context 0 / scheme" in console, console[-3000:]
    assert "kdamond 1 / context 0 / scheme" in console
    actions = {d["action"]: d for d in damon["damon"]}
    assert set(actions) == {"migrate_cold", "migrate_hot"}
    assert damon["promoted"] == actions["migrate_hot"]["sz_applied"] // 4096 > 0

    # the model's timeline covers the run: its reads add up to the run's, and hotcold's part
    # of none runs almost all from CXL while the CHMU promoter's ends mostly on DRAM
    for r in rows.values():
        t = r["timeline"]
        assert sum(i[2] for i in t["intervals"]) <= r["cxl_reads"]
        assert sum(i[2] for i in t["intervals"]) > 0.95 * r["cxl_reads"]
        assert len(t["heatmap"]["lines"]) == len(t["intervals"])

    def late_share(r: dict) -> float:
        last = r["timeline"]["intervals"][-10:]
        return sum(i[2] for i in last) / max(1, sum(i[0] + i[2] for i in last))
    assert late_share(none) > 0.8 and late_share(chmu) < 0.5 * late_share(none)
    for name in [f"{p}-{kind}.png" for p in rows for kind in ("timeline", "heatmap")] + \
            ["cxl_share.png"]:
        assert str(tmp_path / "plots" / name) in doc["plots"]
        w, h = _png_size(tmp_path / "plots" / name)
        assert w >= 600 and h >= 300

    again, _ = tiering(root, "--policies", "chmu")
    assert again["policies"][0] == chmu, "two runs of a policy must give the same row"


def test_bad_tiering_input_is_one_line(linux_plain, tmp_path):
    root, _ = linux_plain
    before = sorted(p.name for p in root.iterdir())
    for extra, words in ((["--policies", "none,fastest"], ("fastest", "numa-balancing")),
                         (["--pressure", "1.2"], ("1.2", "below 1")),
                         (["--set", "scan_delay=5"], ("scan_delay", "scan_delay_ms")),
                         (["--damon-intervals", "5ms,100ms"], ("5ms,100ms", "SAMPLE")),
                         (["--interval", "5 parsecs"], ("5 parsecs", "5ms")),
                         (["--policies", "none,damon"], ("no damo", "cosim boot --pip damo==")),
                         (["--workload", "nosuch", "--policies", "none"], ("nosuch", "gups"))):
        proc = cosim("tiering", "--snapshot-dir", str(root), *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (extra, proc.stderr)
        for w in words:
            assert w in lines[0], (w, lines[0])
    assert sorted(p.name for p in root.iterdir()) == before, "snapshots must be left untouched"
