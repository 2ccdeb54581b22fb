"""Acceptance: ``cosim tiering`` on the real Linux guest, patched QEMU, bridge and model.

hotcold (128 MiB, a 16 MiB hot set) starts after a filler took 98% of node
0's free memory, so most of it, the hot set included, lands on the CXL
node; each policy then runs from the same boot snapshot in simulated time.
NUMA balancing's scan knobs are set short (as the lab notes set them), so
that its scanner acts within a fifth of a simulated second.
"""

from __future__ import annotations

import json

from conftest import cosim

ARGS = ["--workload", "hotcold", "--args", "-s 128M -H 16M -n 16M", "--pressure", "0.98",
        "--set", "scan_delay_ms=10", "--set", "scan_period_min_ms=10",
        "--set", "scan_period_max_ms=50", "--set", "hot_threshold_ms=50", "--json"]


def tiering(root, *extra: str) -> dict:
    proc = cosim("tiering", "--snapshot-dir", str(root), *ARGS, *extra, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_policies_side_by_side(linux_plain):
    """Each active policy moves pages to node 0; the CHMU promoter lowers the CXL share and
    raises hotcold's own throughput against static placement; the kernel's counters show
    NUMA balancing at work; a policy run again gives the same row."""
    root, _ = linux_plain
    doc = tiering(root)
    rows = {r["policy"]: r for r in doc["policies"]}
    assert list(rows) == ["none", "numa-balancing", "chmu"]
    none, numab, chmu = rows["none"], rows["numa-balancing"], rows["chmu"]
    checksums = {r["results"][-1].split("checksum=")[1] for r in rows.values()}
    assert len(checksums) == 1, "placement must not change the data"
    assert none["promoted"] == 0 and none["cxl_share"] > 0.3, none
    assert numab["vmstat"]["numa_hint_faults"] > 0 and numab["vmstat"]["pgpromote_success"] > 0
    assert numab["promoted"] > 0 and chmu["promoted"] > 0
    assert chmu["cxl_share"] < none["cxl_share"]
    assert chmu["per_second"] > none["per_second"] and chmu["cycles"] < none["cycles"]
    again = tiering(root, "--policies", "chmu")["policies"][0]
    assert again == chmu, "two runs of a policy must give the same row"


def test_bad_tiering_input_is_one_line(linux_plain, tmp_path):
    root, _ = linux_plain
    for extra, words in ((["--policies", "none,fastest"], ("fastest", "numa-balancing")),
                         (["--pressure", "1.2"], ("1.2", "below 1")),
                         (["--set", "scan_delay=5"], ("scan_delay", "scan_delay_ms")),
                         (["--workload", "nosuch"], ("nosuch", "gups"))):
        proc = cosim("tiering", "--snapshot-dir", str(root), *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (extra, proc.stderr)
        for w in words:
            assert w in lines[0], (w, lines[0])
