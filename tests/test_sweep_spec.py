"""``cosim sweep`` specs: the grid of the axes, explicit points, digests, and bad specs.

Unit tests of the spec alone (nothing runs): every refusal is one line
naming the bad key or value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cosim.errors import CosimError
from cosim.sweep_spec import load

#: the issue's sweep, CXL latency x 3 and preset x 2 (tests/test_sweep.py runs it)
GRID = '''
[base]
snapshot = "boot_done"
workload = "gups"
args = "-s 16M -n 20000"
numa = "membind=1"
timing = true

[axes]
"cxl.device_latency_ns" = [100, 200, 300]
preset = ["cxl-direct", "cxl-switch"]
'''


def _spec(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(text)
    return p


def test_the_axes_make_a_grid_of_checked_points(tmp_path):
    spec = load(_spec(tmp_path, GRID))
    assert len(spec.points) == 6
    assert [p.params for p in spec.points[:2]] == [
        {"cxl.device_latency_ns": 100, "preset": "cxl-direct"},
        {"cxl.device_latency_ns": 100, "preset": "cxl-switch"}]
    first = spec.points[0]
    assert first.flags == {"snapshot": "boot_done", "workload": "gups", "args": "-s 16M -n 20000",
                           "numa": "membind=1", "timing": True, "preset": "cxl-direct"}
    assert first.config == {"cxl": {"device_latency_ns": 100}}
    assert len({p.digest for p in spec.points}) == 6
    # the digest is of the settings, not of the file: the same spec reads the same
    assert [p.digest for p in load(_spec(tmp_path, GRID)).points] == \
        [p.digest for p in spec.points]


def test_explicit_points_and_base_config_fields(tmp_path):
    spec = load(_spec(tmp_path, '''
[base]
snapshot = "boot_done"
"llc.size_kib" = 4096
[[points]]
"cxl.switch_hops" = 0
[[points]]
"cxl.switch_hops" = 2
smp = 4
'''))
    assert [p.config for p in spec.points] == [
        {"llc": {"size_kib": 4096}, "cxl": {"switch_hops": 0}},
        {"llc": {"size_kib": 4096}, "cxl": {"switch_hops": 2}}]
    assert spec.points[1].flags["smp"] == 4


@pytest.mark.parametrize("text, words", [
    (GRID.replace('"cxl.device_latency_ns"', '"cxl.device_latency"'),
     ("cxl.device_latency", "device_latency_ns")),
    (GRID.replace("[100, 200, 300]", "[100, 200000, 300]"), ("200000", "10000")),
    (GRID.replace("[100, 200, 300]", "[]"), ("cxl.device_latency_ns", "non-empty")),
    (GRID.replace('preset = ["cxl-direct", "cxl-switch"]', 'preset = ["cxl-direct", "fast"]'),
     ("fast", "cxl-switch")),
    (GRID.replace('timing = true', 'timing = true\nsmp = 0'), ("smp", "1..64")),
    (GRID.replace('workload = "gups"', 'wrkload = "gups"'), ("wrkload", "workload")),
    (GRID.replace('snapshot = "boot_done"\n', ''), ("snapshot = NAME",)),
    (GRID.replace("[axes]", "[axis]"), ("axis",)),
    (GRID + "\n[[points]]\nsmp = 2\n", ("either",)),
    ("[base\n", ("not TOML",)),
    (GRID.replace("[100, 200, 300]", "[100, 100]"), ("same run",)),
    (GRID.replace("timing = true", "timing = false"), ("cxl", "need timing = true")),
    # fields that are each in range but do not fit together (checked as a --config file is)
    (GRID.replace("[axes]", '[axes]\n"llc.line_bytes" = [64, 48]'), ("point 6 (llc.line_bytes=48", "power of two")),
])
def test_a_bad_spec_is_one_line(tmp_path, text, words):
    with pytest.raises(CosimError) as e:
        load(_spec(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_point_becomes_a_cosim_run_command_and_config_file(tmp_path):
    import tomllib

    from cosim.sweep_run import command, config_toml, headline
    point = load(_spec(tmp_path, GRID)).points[3]
    text = config_toml(point.config)
    assert tomllib.loads(text) == {"cxl": {"device_latency_ns": 200}}
    argv = command(point, tmp_path / "c.toml", tmp_path / "snaps")
    assert argv[2:5] == ["cosim.cli", "run", "--json"]
    assert argv[argv.index("--preset") + 1] == "cxl-switch"
    assert "--args=-s 16M -n 20000" in argv and "--timing" in argv
    assert argv[argv.index("--config") + 1] == str(tmp_path / "c.toml")
    tier = {"reads": 10, "writes": 2, "mean_latency_ns": 90.0, "p99_latency_ns": 100.0,
            "bandwidth_gbps": 1.5}
    row = headline({"session_insns": 400, "digest": "d", "wall_seconds": 1.0,
                    "guest_results": ["RESULT gups updates=20000 loop_ns=1500 checksum=0x1f",
                                      "noise", "RESULT vm ratio=0.25"], "timing": {
        "cycles": 1000, "seconds": 1e-6, "memory": {"dram": tier, "cxl": tier},
        "cores": [{"instructions": 300, "cpi_stack": {"base": 1.0, "dram": 2.0}},
                  {"instructions": 100, "cpi_stack": {"base": 1.0, "dram": 0.0}}]}})
    assert row["cycles"] == 1000 and row["cxl_reads"] == 10
    assert row["cpi_dram"] == 1.5 and row["cpi_base"] == 1.0
    assert row["gups.updates"] == 20000 and row["gups.loop_ns"] == 1500
    assert row["vm.ratio"] == 0.25 and "gups.checksum" not in row
    # wall time stays in run.json: the table is the same wherever the sweep ran
    assert "wall_seconds" not in row


def test_the_example_spec_is_valid():
    spec = load(Path(__file__).resolve().parent.parent / "examples" / "cxl_latency_sweep.toml")
    assert len(spec.points) == 10 and spec.points[0].flags["snapshot"] == "boot_done"


def test_a_worker_that_cannot_see_the_output_says_so(tmp_path):
    from cosim.sweep_run import _check_shared
    assert "must be shared" in _check_shared(str(tmp_path / "elsewhere"), None)
    (tmp_path / ".probe").write_text("cosim sweep\n")
    assert _check_shared(str(tmp_path), None) == ""
    assert "snapshot directory" in _check_shared(str(tmp_path), str(tmp_path / "snaps"))


def test_salted_digests_follow_the_inputs(tmp_path):
    spec = load(_spec(tmp_path, GRID))
    a, b = spec.salted("code-1"), spec.salted("code-2")
    assert [p.params for p in a.points] == [p.params for p in spec.points]
    assert len({p.digest for p in a.points + b.points + spec.points}) == 18
    assert [p.digest for p in a.points] == [p.digest for p in spec.salted("code-1").points]


def test_inputs_digest_covers_snapshots_and_kernels(tmp_path):
    from cosim.sweep_run import inputs_digest
    manifest, kernel = tmp_path / "manifest.json", tmp_path / "k.elf"
    manifest.write_text('{"members": 1}')
    kernel.write_bytes(b"\x7fELF1")
    first = inputs_digest([manifest], [kernel])
    assert inputs_digest([manifest], [kernel]) == first
    manifest.write_text('{"members": 2}')          # the snapshot was taken again
    second = inputs_digest([manifest], [kernel])
    kernel.write_bytes(b"\x7fELF2")                # the kernel was rebuilt
    assert len({first, second, inputs_digest([manifest], [kernel])}) == 3


def test_kernels_become_absolute_paths_for_the_workers(tmp_path):
    spec = load(_spec(tmp_path, '''
[base]
timing = true
[axes]
kernel = ["gups", "build/stream.elf"]
'''))
    resolved = spec.with_kernels({"gups": "/g/gups.elf", "build/stream.elf": "/s/stream.elf"})
    assert [p.flags["kernel"] for p in resolved.points] == ["/g/gups.elf", "/s/stream.elf"]
    # what the table shows, and the digests, stay as the spec wrote them
    assert [p.params for p in resolved.points] == [p.params for p in spec.points]
    assert [p.digest for p in resolved.points] == [p.digest for p in spec.points]
