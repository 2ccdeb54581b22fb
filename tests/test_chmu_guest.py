"""Acceptance: the CHMU on a real Linux guest (patched QEMU, guest image, bridge, model).

hotcold puts a 16 MiB hot set (90% of the accesses) inside 128 MiB bound to
the CPU-less CXL node and prints where the hot set lies physically
(``-P``); the CHMU counts what reaches the CXL device, and its hot lists
must point there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cosim import snapshot as snap

from conftest import cosim, linux_run

HOTCOLD = "-s 128M -H 16M -n 1M -P"


@pytest.fixture(scope="module")
def plain(linux_plain) -> tuple[Path, str]:
    return linux_plain


def hot_ranges(console: Path) -> list[tuple[int, int]]:
    """(start, length) of the hot set's physical pages, as hotcold printed them."""
    m = re.search(r"^HOTPHYS ranges=(\S+) pages=(\d+)", console.read_text(), re.M)
    assert m, "hotcold -P printed no HOTPHYS line"
    ranges = [(int(a, 16), int(b, 16)) for a, b in (r.split("+") for r in m.group(1).split(","))]
    assert sum(n for _, n in ranges) == 16 << 20
    return ranges


def loop_epochs(chmu: dict) -> list[dict]:
    """The kept epochs but the last (the run's end lies in it: checksum and exit)."""
    epochs = chmu["last_epochs"][:-1]
    assert len(epochs) >= 8, f"too few epochs kept: {len(epochs)}"
    return epochs


def run_hotcold(root: Path, tmp_path: Path, spec: str, *extra: str) -> tuple[dict, Path]:
    console = tmp_path / f"console-{len(list(tmp_path.iterdir()))}.txt"
    out = linux_run(root, "boot_done", "--timing", "--chmu", spec, "--workload", "hotcold",
                    "--args", HOTCOLD, "--numa", "membind=1", "--console", str(console), *extra)
    assert out["workload_exit_code"] == 0
    return out, console


def test_hot_lists_point_at_the_hot_set(plain, tmp_path):
    """64 KiB units (256 in the hot set), 1024 space-saving counters: every tracker measured,
    space-saving and the oracle agree, and the oracle's units lie in the hot set."""
    root, _ = plain
    out, console = run_hotcold(root, tmp_path, "tracker=space-saving+oracle+count-min+sample,"
                               "unit=64K,counters=1024,epoch=1ms,threshold=32,epochs=10")
    ranges = hot_ranges(console)
    chmu = out["timing"]["chmu"]
    assert chmu["config"]["counters"] == 1024 and chmu["config"]["unit_bytes"] == 65536
    unit = 65536

    def in_hot(addr: int) -> bool:
        return any(s <= addr and addr + unit <= s + n for s, n in ranges)

    epochs = loop_epochs(chmu)
    for e in epochs:
        inst = e["instances"][0]
        listed = inst["hot_list"]                       # the device's tracker: space-saving
        assert listed and sum(map(in_hot, listed)) >= 0.95 * len(listed), e["epoch"]
        acc = inst["accuracy"]
        assert acc["oracle"]["precision"] == 1.0 and acc["oracle"]["recall"] == 1.0
        assert acc["space-saving"]["precision"] >= 0.9, acc
        assert acc["space-saving"]["recall"] >= 0.9, acc
        for name in ("count-min", "sample"):
            assert 0.0 <= acc[name]["precision"] <= 1.0 and 0.0 <= acc[name]["recall"] <= 1.0
    # the hot set holds 90% of the accesses: the oracle's list covers about that much
    assert all(e["instances"][0]["accuracy"]["oracle"]["coverage"] > 0.8 for e in epochs)
    run_means = chmu["accuracy"]
    assert set(run_means) == {"space-saving", "oracle", "count-min", "sample"}
    assert all(m["epochs"] >= len(epochs) for m in run_means.values())


def test_oracle_units_of_a_page_lie_in_the_hot_set(plain, tmp_path):
    """4 KiB units: the oracle's 1024 hottest pages are hot-set pages."""
    root, _ = plain
    out, console = run_hotcold(root, tmp_path, "tracker=oracle,unit=4K,epoch=1ms,threshold=4,"
                               "capacity=1024,epochs=10")
    ranges = hot_ranges(console)
    for e in loop_epochs(out["timing"]["chmu"]):
        listed = e["instances"][0]["hot_list"]
        inside = sum(1 for a in listed if any(s <= a < s + n for s, n in ranges))
        assert len(listed) == 1024 and inside >= 0.95 * len(listed), (e["epoch"], inside)


def test_chmu_continues_exactly_from_a_snapshot(plain, tmp_path):
    """Save mid-run with the CHMU on, restore, finish: the same hot lists, accuracy and cycles."""
    root, _ = plain
    spec = "tracker=space-saving+count-min+sample,unit=16K,epoch=500us,epochs=50"
    args = ("--timing", "--chmu", spec, "--workload", "hotcold", "--args", "-s 32M -H 4M -n 300k",
            "--numa", "membind=1")
    straight = linux_run(root, "boot_done", *args)
    half = straight["session_insns"] // 2
    first = linux_run(root, "boot_done", *args, "--max-insns", str(half), "--save", "mid-chmu")
    try:
        assert first["timing"]["chmu"]["epochs"] > 0
        rest = linux_run(root, "mid-chmu", "--timing", "--chmu", spec)
    finally:
        snap.Store(root).remove("mid-chmu")
    assert rest["cycles"] == straight["cycles"]
    assert not any("CHMU starts" in n for n in rest.get("notes", []))
    assert rest["timing"]["chmu"] == straight["timing"]["chmu"]


def test_bad_chmu_settings_are_one_line(plain):
    root, _ = plain
    for spec, says in (("unit=3000", "--chmu unit=3000: a power of two from 256 B to 1G"),
                       ("epoch=20us", "--chmu epoch=20us: a time from 100us to 100s"),
                       ("counters=0", "--chmu counters=0: must be an integer in 1..1048576"),
                       ("tracker=lfu", "--chmu tracker=lfu: must be one or more of")):
        p = cosim("run", "--snapshot", "boot_done", "--snapshot-dir", str(root), "--timing",
                  "--chmu", spec, "--workload", "hotcold")
        assert p.returncode == 2 or p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], p.stderr
    p = cosim("run", "--snapshot", "boot_done", "--snapshot-dir", str(root), "--chmu", "")
    assert p.returncode != 0 and "need --timing" in p.stderr


def test_the_guest_chooses_the_unit(plain, tmp_path):
    """`chmu config unit=2M` in the guest: counted in 2 MiB units from the next epoch on,
    hot lists of 2 MiB units inside the hot set; a unit the device does not list is
    refused in one line in the guest."""
    root, _ = plain
    console = tmp_path / "console.txt"
    out = linux_run(root, "boot_done", "--timing", "--chmu",
                    "tracker=space-saving+oracle,unit=64K,epoch=1ms,threshold=32,epochs=10",
                    "--workload", "chmu", "--args", f"config unit=2M -- /workloads/hotcold {HOTCOLD}",
                    "--numa", "membind=1", "--console", str(console))
    assert out["workload_exit_code"] == 0
    chmu = out["timing"]["chmu"]
    assert chmu["config"]["unit_bytes"] == 64 << 10 and chmu["config"]["device_unit_bytes"] == 2 << 20
    ranges = hot_ranges(console)

    def hot_share(a: int) -> float:
        """The share of the 2 MiB unit at ``a`` that is hot set."""
        return sum(max(0, min(a + (2 << 20), s + n) - max(a, s)) for s, n in ranges) / (2 << 20)

    frames = {s + k - (s + k) % (2 << 20) for s, n in ranges for k in range(0, n, 4096)}
    full = [a for a in frames if hot_share(a) == 1.0]
    assert len(full) >= 2, "the hot set fills no 2 MiB unit"
    for e in loop_epochs(chmu):
        listed = e["instances"][0]["hot_list"]
        assert listed and all(a % (2 << 20) == 0 for a in listed), e["epoch"]
        # the hottest units are (mostly) hot set: 90% of the accesses go to 16 MiB
        assert all(hot_share(a) >= 0.5 for a in listed[:len(full)]), (e["epoch"], listed)
        assert e["instances"][0]["accuracy"]["space-saving"]["recall"] >= 0.9
    bad = cosim("run", "--snapshot", "boot_done", "--snapshot-dir", str(root), "--json",
                "--timing", "--chmu", "unit=64K", "--workload", "chmu",
                "--args", "config unit=32K -- /workloads/hotcold -s 1M",
                "--console", str(tmp_path / "bad.txt"))
    assert bad.returncode == 1 and json.loads(bad.stdout)["workload_exit_code"] == 2
    said = [ln for ln in (tmp_path / "bad.txt").read_text().splitlines() if "unit=32K" in ln]
    assert len(said) == 1 and "want one of the unit sizes info lists" in said[0], said


PROMOTE_SPEC = "tracker=space-saving,counters=1024,unit=64K,epoch=1ms,threshold=32"
PROMOTE_HOTCOLD = "/workloads/hotcold -s 128M -H 16M -n 3M"


def second_half_reads(chmu: dict) -> int:
    """CXL device reads in the second half of the run's epochs."""
    epochs = chmu["series"]["epochs"]
    assert chmu["series"]["first_epoch"] == 0, "the series lost epochs"
    return sum(reads for _, _, reads in epochs[len(epochs) // 2:])


def test_live_promotion_moves_the_hot_set_to_dram(plain, tmp_path):
    """hotcold preferring the CXL node under ``chmu promote``: against the same run without
    promotion (``--dry-run``) the second half's CXL reads fall by more than half, the run
    takes fewer cycles, the checksum is the same, and two runs move the same pages."""
    root, _ = plain
    runs = {}
    for name, mode in (("base", "--dry-run "), ("first", ""), ("second", "")):
        console = tmp_path / f"{name}.txt"
        out = linux_run(root, "boot_done", "--timing", "--chmu", PROMOTE_SPEC,
                        "--numa", "preferred=1", "--workload", "chmu",
                        "--args", f"promote {mode}-- {PROMOTE_HOTCOLD}",
                        "--console", str(console))
        assert out["workload_exit_code"] == 0, console.read_text()[-2000:]
        text = console.read_text()
        runs[name] = (out, re.findall(r"^PROMOTE .*$", text, re.M),
                      re.search(r"checksum=(0x[0-9a-f]+)", text).group(1))
    base, first, second = (runs[k] for k in ("base", "first", "second"))
    assert base[2] == first[2] == second[2], "migration must not change the data"
    done = first[1][-1]
    moved = int(re.search(r"moved=(\d+)", done).group(1))
    assert moved >= (16 << 20) // 4096, done            # at least the hot set's pages
    assert first[1] == second[1], "two runs must migrate the same pages"
    assert first[0]["cycles"] == second[0]["cycles"]
    assert "moved=0 " in base[1][-1]
    assert first[0]["cycles"] < base[0]["cycles"]
    before = second_half_reads(base[0]["timing"]["chmu"])
    after = second_half_reads(first[0]["timing"]["chmu"])
    assert after <= 0.5 * before, (before, after)


def test_the_cxl_type3_device_has_its_own_chmu(linux_cxl, tmp_path):
    """With a cxl-type3 device the guest finds the window's CHMU instance in the device's own
    register block (Register Locator entry 5, BAR 5), the CPU-less node's in the PCI device,
    and ``chmu promote`` moves hot pages off the type3 window reading that block alone."""
    root, _ = linux_cxl
    console = tmp_path / "info.txt"
    out = linux_run(root, "boot_cxl", "--timing", "--chmu", PROMOTE_SPEC, "--workload", "chmu",
                    "--args", "info", "--console", str(console))
    assert out["workload_exit_code"] == 0, console.read_text()[-2000:]
    instances = out["timing"]["chmu"]["instances"]
    assert len(instances) == 2, instances               # node 1, the type3 window
    text = console.read_text()
    found = {int(i): (where, int(base, 16), int(size, 16)) for i, where, base, size in re.findall(
        r"^instance (\d+): in=(.+?) version=1 .*? base=(0x[0-9a-f]+) size=(0x[0-9a-f]+)", text,
        re.M)}
    assert set(found) == {0, 1}, text[-2000:]
    assert found[0][0].startswith("pci ") and found[0][0].endswith(" BAR2"), found
    assert re.fullmatch(r"cxl-type3 \S+ BAR5\+0x0", found[1][0]), found
    window = instances[1]
    assert found[1][1:] == (int(window["start"], 16),
                            int(window["end"], 16) - int(window["start"], 16)), (found, window)

    console = tmp_path / "promote.txt"
    out = linux_run(root, "boot_cxl", "--timing", "--chmu", PROMOTE_SPEC, "--numa", "preferred=2",
                    "--workload", "chmu", "--args", f"promote -- {PROMOTE_HOTCOLD}",
                    "--console", str(console))
    text = console.read_text()
    assert out["workload_exit_code"] == 0, text[-2000:]
    lo, hi = (int(window[k], 16) for k in ("start", "end"))
    listed = [a for e in out["timing"]["chmu"]["last_epochs"] for inst in e["instances"]
              if inst["instance"] == 1 for a in inst["hot_list"]]
    assert listed and all(lo <= a < hi for a in listed), "the window's instance lists its units"
    done = re.findall(r"^PROMOTE done .*$", text, re.M)
    assert done, text[-2000:]
    assert int(re.search(r"moved=(\d+)", done[-1]).group(1)) >= (16 << 20) // 4096, done
