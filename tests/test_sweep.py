"""``cosim sweep``: a 2-axis sweep from ``boot_done`` on Dask, end to end.

Real runs: each point is a ``cosim run`` of the Linux guest (QEMU, bridge,
timing model) restored from the shared ``boot_done`` snapshot. The same
spec runs on the default LocalCluster and on a separately started ``dask
scheduler`` with two ``dask worker`` processes, one of which is killed
while it runs a point; an interrupted sweep resumes with only the missing
points; bad specs are refused before anything runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import REPO, cosim, qemu_pids
from test_sweep_spec import GRID as SPEC   # CXL latency x 3, preset x 2, GUPS on the CXL node

DASK = Path(sys.executable).with_name("dask")


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "latency.toml"
    path.write_text(text)
    return path


def _sweep(spec: Path, out: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = cosim("sweep", str(spec), "--out", str(out), "--snapshot-dir", str(root), *extra,
                 timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


@pytest.fixture(scope="module")
def local(linux_plain, tmp_path_factory) -> tuple[Path, Path, Path, pd.DataFrame]:
    """The sweep on the default LocalCluster: (snapshot root, spec, output, table)."""
    root, _ = linux_plain
    tmp = tmp_path_factory.mktemp("sweep-local")
    spec = _spec(tmp)
    proc = _sweep(spec, tmp / "out", root)
    assert "6 points, 0 from an earlier run, 6 run now, 0 failed" in proc.stdout
    # off a terminal, a progress line per finished point: counts, running points, ETA
    lines = [x for x in proc.stderr.splitlines() if x.startswith("[cosim sweep] ")]
    assert lines[-1] == "[cosim sweep] 6/6 points (0 from an earlier run), 0 failed, 0 running"
    assert any(", ETA " in x and "running" in x for x in lines), lines
    return root, spec, tmp / "out", _table(tmp / "out")


def test_local_sweep_table_follows_both_axes(local):
    _, _, out, table = local
    assert list(table["status"]) == ["done"] * 6 and not table["error"].any()
    assert list(table["cxl.device_latency_ns"]) == [100, 100, 200, 200, 300, 300]
    assert list(table["preset"]) == ["cxl-direct", "cxl-switch"] * 3
    for preset, part in table.groupby("preset"):
        cycles = list(part.sort_values("cxl.device_latency_ns")["cycles"])
        assert cycles[0] < cycles[1] < cycles[2], (preset, cycles)
        means = list(part.sort_values("cxl.device_latency_ns")["cxl_mean_latency_ns"])
        assert means[0] < means[1] < means[2], (preset, means)
    by = table.set_index(["cxl.device_latency_ns", "preset"])
    for lat in (100, 200, 300):
        # a switch hop adds latency to every CXL access
        assert by.loc[(lat, "cxl-switch"), "cycles"] > by.loc[(lat, "cxl-direct"), "cycles"]
    assert (table["cxl_reads"] > 0).all() and (table["instructions"] > 0).all()
    # the workload's own figure, by the guest's clock: slower CXL, more ns per update
    ns_per_update = table["gups.loop_ns"] / table["gups.updates"]
    assert (table["gups.updates"] == 20000).all()
    for preset in ("cxl-direct", "cxl-switch"):
        series = list(ns_per_update[table["preset"] == preset])
        assert series[0] < series[1] < series[2], (preset, series)
    assert {"cpi_base", "dram_reads", "seconds", "digest"} <= set(table.columns)
    # each run's full JSON beside the table, its config file with the point's latency
    for digest, lat, cycles in zip(table["digest"], table["cxl.device_latency_ns"],
                                   table["cycles"]):
        run = json.loads((out / "points" / digest / "run.json").read_text())
        assert run["timing"]["cycles"] == cycles
        assert f"device_latency_ns = {lat}" in (out / "points" / digest / "config.toml").read_text()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _worker_children(pid: int) -> list[psutil.Process]:
    """The cosim runs a worker process is running now."""
    return [c for c in psutil.Process(pid).children()
            if "cosim.cli" in " ".join(c.cmdline())]


def test_scheduler_and_two_workers_give_the_same_table_even_when_one_is_killed(local, tmp_path):
    root, spec, _, expected = local
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(DASK), "scheduler", "--scheduler-file", str(sched_file),
                               "--port", "0", "--no-dashboard"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    before = qemu_pids()
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        workers = [subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1",
                                     "--no-nanny", "--no-dashboard", "--name", f"w{i}"],
                                    cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for i in range(2)]
        procs += workers
        from distributed import Client
        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=60)

        # the same sweep on the cluster: the same table
        _sweep(spec, tmp_path / "cluster", root, "--scheduler", address)
        pd.testing.assert_frame_equal(_table(tmp_path / "cluster"), expected)

        # again, and kill a worker while it runs a point: Dask runs it on the other one
        sweep = subprocess.Popen(
            [sys.executable, "-m", "cosim.cli", "sweep", str(spec), "--out",
             str(tmp_path / "killed"), "--snapshot-dir", str(root), "--scheduler", address],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        victim = workers[0]
        deadline = time.monotonic() + 300
        while not _worker_children(victim.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        running = _worker_children(victim.pid)
        assert running, "worker w0 never ran a point"
        victim.send_signal(signal.SIGKILL)
        stdout, stderr = sweep.communicate(timeout=1200)
        assert sweep.returncode == 0, stdout + stderr[-3000:]
        assert "0 failed" in stdout
        pd.testing.assert_frame_equal(_table(tmp_path / "killed"), expected)
        # the killed worker's point (its cosim run, and that run's QEMU) died with it
        assert not any(_alive(p) for p in running)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert not (qemu_pids() - before), "a QEMU outlived its worker"


def test_an_interrupted_sweep_resumes_with_only_the_missing_points(local, tmp_path):
    root, spec, _, expected = local
    out = tmp_path / "resume"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cosim.cli", "sweep", str(spec), "--out", str(out),
         "--snapshot-dir", str(root)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while len(list(out.glob("points/*/run.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = qemu_pids()
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "cosim: interrupted"
    # the local cluster's workers went with it, and so did the points they were running
    deadline = time.monotonic() + 30
    while qemu_pids() & before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not qemu_pids() & before
    kept = {p: p.stat().st_mtime_ns for p in out.glob("points/*/run.json")}
    assert 2 <= len(kept) < 6, len(kept)
    assert not (out / "results.parquet").exists()

    proc = _sweep(spec, out, root)
    assert (f"6 points, {len(kept)} from an earlier run, {6 - len(kept)} run now, 0 failed"
            in proc.stdout), proc.stdout
    # the points done before were not run again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    pd.testing.assert_frame_equal(_table(out), expected)

    # all done: a third run runs nothing, and writes the same table
    proc = _sweep(spec, out, root, "--csv")
    assert "6 points, 6 from an earlier run, 0 run now, 0 failed" in proc.stdout
    csv = pd.read_csv(out / "results.csv")
    assert list(csv["cycles"]) == list(expected["cycles"])


def test_sweep_plot_draws_the_table(local, tmp_path):
    _, _, _, table = local
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    for y, name in (("cycles", "cycles"), ("gups.loop_ns/gups.updates",
                                            "gups.loop_ns-per-gups.updates")):
        proc = cosim("sweep", "plot", str(path), "--x", "cxl.device_latency_ns", "--y", y,
                     "--hue", "preset")
        assert proc.returncode == 0, proc.stderr
        png = tmp_path / f"t-{name}-vs-cxl.device_latency_ns.png"
        assert proc.stdout.strip() == f"wrote {png}"
        assert png.is_file() and png.stat().st_size > 10_000
    bad = cosim("sweep", "plot", str(path), "--x", "latency", "--y", "cycles")
    assert bad.returncode == 2 and "no column 'latency'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("change, words", [
    (('"cxl.device_latency_ns"', '"cxl.device_latncy_ns"'), ("cxl.device_latncy_ns",)),
    (("[100, 200, 300]", "[100, 200, 99999]"), ("99999",)),
    (("[100, 200, 300]", "[]"), ("cxl.device_latency_ns", "non-empty")),
    (('"boot_done"', '"boot_gone"'), ("boot_gone", "snapshot list")),
])
def test_a_bad_spec_is_refused_before_anything_runs(tmp_path, change, words):
    spec = _spec(tmp_path, SPEC.replace(*change))
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    proc = cosim("sweep", str(spec), "--out", str(tmp_path / "out"), "--snapshot-dir", str(snaps))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosim: error: sweep spec"), lines
    for w in words:
        assert w in lines[0], (w, lines)
    assert not (tmp_path / "out").exists()


def test_chmu_accuracy_columns_follow_the_counter_budget(tmp_path):
    """Explicit points of a bare-metal guest with the CHMU on: the table carries each
    tracker's accuracy, and space-saving's recall grows with its counter budget."""
    spec = _spec(tmp_path, '''
[base]
kernel = "gups"
smp = 2
timing = true
preset = "cxl-direct"
chmu = "tracker=space-saving+count-min"
max_insns = 3000000
"chmu.epoch_us" = 100

[[points]]
"chmu.counters" = 64

[[points]]
"chmu.counters" = 1024
''')
    proc = cosim("sweep", str(spec), "--out", str(tmp_path / "out"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    table = _table(tmp_path / "out")
    assert list(table["chmu.counters"]) == [64, 1024]
    assert (table["chmu_space-saving_epochs"] > 0).all()
    assert (table["chmu_oracle_recall"] == 1.0).all()
    small, large = table["chmu_space-saving_recall"]
    assert small < large, (small, large)
    # the monitor only observes: the counter budget does not change the timing
    assert table["cycles"].nunique() == 1
