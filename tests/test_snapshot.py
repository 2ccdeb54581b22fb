"""Snapshots: a restored run continues exactly where the straight run would be.

Every run here is the real patched QEMU, plugin and bridge in its own
process (the CLI), so "restore in a fresh process" is literal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cosim, cosim_json
from cosim import snapshot as snap
from cosim.libqflex_bridge import TRACE_BATCH_INSNS

TIMING_KEYS = ("cycles", "cores", "timing")


def outcome(out: dict, console: str = "") -> dict:
    """What must match between a straight run and a split one."""
    keep = {
        "insns": [v["insns"] for v in out["vcpus"]],
        "turns": [v["turns"] for v in out["vcpus"]],
        "halted": [v["halted_turns"] for v in out["vcpus"]],
        "total": out["total_insns"],
        "digest": out["digest"],
        "results": out["guest_results"],
        "short_turns": out["short_turns"],
        "stopped_by": out["stopped_by"],
    }
    for k in TIMING_KEYS:
        if k in out:
            keep[k] = out[k]
    return keep


def run_json(*args: str) -> dict:
    return cosim_json(*args)


CASES = [
    # (guest, harts, first half, extra flags)
    ("gups-ws1m-n20000", 1, 600_000, ()),
    ("spinlock", 4, 4_000_000, ()),
    ("gups-ws1m-n20000", 1, 600_000, ("--timing",)),
    ("spinlock-n4000", 4, 400_000, ("--timing", "--order", "exact")),
    ("spinlock-n4000", 4, 400_000, ("--timing",)),     # round order, the default
]


@pytest.mark.parametrize("guest,smp,half,extra", CASES,
                         ids=["fast-1", "fast-4", "timing-1", "timing-4-exact", "timing-4-round"])
def test_continuation_matches_straight_run(tmp_path: Path, guest: str, smp: int, half: int,
                                           extra: tuple) -> None:
    base = ("--kernel", guest, "--smp", str(smp), "--quantum", "1000",
            "--snapshot-dir", str(tmp_path), *extra)
    mode = () if extra else ("--mode", "trace")
    # N straight versus N/2, save, restore in a fresh process, N/2 more
    straight = run_json(*base, *mode, "--max-insns", str(2 * half))
    first = run_json(*base, *mode, "--max-insns", str(half), "--save", "half")
    # the save point is the first round (timing: command) boundary at or after
    # N/2; under --timing a vCPU that runs alone gets a batch of turns per command
    # (round order: a round of every hart's turns, each at most a batch)
    batch = TRACE_BATCH_INSNS if extra and smp == 1 else smp * 1000
    if extra and smp > 1 and "exact" not in extra:
        batch = smp * TRACE_BATCH_INSNS
    assert half <= first["total_insns"] < half + batch
    second = run_json("--snapshot", "half", "--snapshot-dir", str(tmp_path), *extra, *mode,
                      "--max-insns", str(2 * half - first["total_insns"]))
    assert second["restored_from"] == "half"
    assert outcome(second) == outcome(straight)
    # and to the end of the guest: the same output, counts, digest (and cycles)
    to_end = run_json(*base, *mode)
    rest = run_json("--snapshot", "half", "--snapshot-dir", str(tmp_path), *extra, *mode)
    assert to_end["guest_results"], "guest printed no RESULT line"
    assert outcome(rest) == outcome(to_end)


def test_same_snapshot_restored_five_times(tmp_path: Path) -> None:
    d = ("--snapshot-dir", str(tmp_path))
    run_json("--kernel", "false_sharing", "--smp", "4", "--mode", "trace",
             "--max-insns", "200000", "--save", "fs", *d)
    results = [outcome(run_json("--snapshot", "fs", "--mode", "trace", *d)) for _ in range(5)]
    assert results[0]["results"], "guest printed no RESULT line"
    assert all(r == results[0] for r in results[1:])


def test_restore_with_another_quantum_is_allowed_and_noted(tmp_path: Path) -> None:
    d = ("--snapshot-dir", str(tmp_path))
    run_json("--kernel", "spinlock", "--max-insns", "400000", "--save", "q", *d)
    out = run_json("--snapshot", "q", "--quantum", "500", *d)
    assert out["quantum"] == 500
    assert any("quantum 500" in n for n in out["notes"])
    assert out["guest_results"] and out["stopped_by"] == "guest-exit"


def test_timing_restore_without_timing_state_warms_up(tmp_path: Path) -> None:
    d = ("--snapshot-dir", str(tmp_path))
    run_json("--kernel", "pchase-ws65536-it1000000", "--smp", "1", "--max-insns", "150000",
             "--save", "plain", *d)
    cold = run_json("--snapshot", "plain", "--timing", "--max-insns", "200000", *d)
    warm = run_json("--snapshot", "plain", "--timing", "--warmup", "200000",
                    "--max-insns", "200000", *d)
    assert any("caches start cold" in n for n in cold["notes"])
    assert any("warmed up" in n for n in warm["notes"])
    assert warm["cores"][0]["instructions"] == 200_000
    # the same 200k instructions cost less with the 64 KiB ring already in L2
    assert warm["cycles"] < cold["cycles"]


@pytest.mark.parametrize("change,cold_levels", [
    ("[l2]\nways = 8\n", {"l1i", "l1d", "l2"}),      # same lines, twice the sets
    ("[llc]\nways = 8\n", {"llc"}),
    ("[l2]\nlatency = 20\n", set()),                   # same geometry: all warm
])
def test_timing_restore_by_cache_geometry(tmp_path: Path, change: str, cold_levels: set) -> None:
    """A cache whose sets and ways changed starts cold, even where the arrays keep their shape;
    a cold L2 takes its L1s along (inclusion); the others restore warm."""
    d = ("--snapshot-dir", str(tmp_path))
    run_json("--kernel", "gups-ws1m-n20000", "--smp", "2", "--timing", "--max-insns", "300000",
             "--save", "t", *d)
    cfg = tmp_path / "changed.toml"
    cfg.write_text(change)
    out = run_json("--snapshot", "t", "--timing", "--config", str(cfg), "--max-insns", "400000", *d)
    notes = [n for n in out["notes"] if n.startswith("started cold")]
    named = {name.partition(".")[0] for n in notes for name in n.split(": ", 1)[1].split(", ")}
    assert named == cold_levels, notes


# -- refusals and damage: clear errors, nothing lost -------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("snaps")
    run_json("--kernel", "spinlock", "--smp", "2", "--max-insns", "100000", "--save", "ok",
             "--snapshot-dir", str(root))
    return root


def damaged_copy(saved: Path, tmp_path: Path, name: str) -> Path:
    shutil.copytree(saved / "ok", tmp_path / name)
    return tmp_path / name


def restore_error(root: Path, name: str) -> str:
    proc = cosim("run", "--snapshot", name, "--snapshot-dir", str(root))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosim: error: "), proc.stderr
    return lines[0]


def test_truncated_machine_state_is_refused(saved: Path, tmp_path: Path) -> None:
    d = damaged_copy(saved, tmp_path, "cut")
    state = d / snap.MACHINE_STATE
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    assert "machine.state is truncated" in restore_error(tmp_path, "cut")
    assert state.stat().st_size == len(data) // 2, "the damaged file must be left alone"


def test_corrupt_state_is_refused(saved: Path, tmp_path: Path) -> None:
    d = damaged_copy(saved, tmp_path, "flip")
    state = d / snap.RUN_STATE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    assert "run.msgpack is corrupt" in restore_error(tmp_path, "flip")
    assert d.is_dir()


def test_missing_manifest_is_refused(saved: Path, tmp_path: Path) -> None:
    d = damaged_copy(saved, tmp_path, "nomani")
    (d / snap.MANIFEST).unlink()
    assert "manifest.json is missing" in restore_error(tmp_path, "nomani")
    assert (d / snap.MACHINE_STATE).is_file()


def test_other_qemu_build_is_refused(saved: Path, tmp_path: Path) -> None:
    d = damaged_copy(saved, tmp_path, "oldqemu")
    m = json.loads((d / snap.MANIFEST).read_text())
    m["qemu"]["build_id"] = "0" * 40
    (d / snap.MANIFEST).write_text(json.dumps(m))
    assert "restore it with that build" in restore_error(tmp_path, "oldqemu")


def test_other_guest_is_refused(saved: Path, tmp_path: Path) -> None:
    proc = cosim("run", "--snapshot", "ok", "--kernel", "atomic", "--snapshot-dir", str(saved))
    assert proc.returncode == 2
    assert "restoring into another guest is refused" in proc.stderr


def test_saving_over_a_name_needs_force(saved: Path) -> None:
    before = (saved / "ok" / snap.MANIFEST).read_text()
    args = ("run", "--kernel", "spinlock", "--smp", "2", "--max-insns", "50000",
            "--save", "ok", "--snapshot-dir", str(saved))
    proc = cosim(*args)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert (saved / "ok" / snap.MANIFEST).read_text() == before
    # with --force into a copy, so the module's snapshot stays as it was
    other = saved.parent / "forced"
    shutil.copytree(saved, other)
    proc = cosim(*args[:-1], str(other), "--force")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((other / "ok" / snap.MANIFEST).read_text())["total_insns"] == 50_000


def test_force_on_a_full_disk_keeps_the_old_snapshot(saved: Path, tmpfs) -> None:
    """--force over a snapshot, on a disk with room for one: the old one stays restorable."""
    disk = tmpfs("2M")
    shutil.copytree(saved / "ok", disk / "ok")
    before = (disk / "ok" / snap.MANIFEST).read_text()
    proc = cosim("run", "--kernel", "spinlock", "--smp", "2", "--max-insns", "50000",
                 "--save", "ok", "--force", "--snapshot-dir", str(disk))
    assert proc.returncode == 2 and "snapshot ok not saved" in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr
    assert sorted(p.name for p in disk.iterdir()) == ["ok"]
    assert (disk / "ok" / snap.MANIFEST).read_text() == before
    snap.Store(disk).load("ok")                     # every member verifies
    assert run_json("--snapshot", "ok", "--snapshot-dir", str(disk))["stopped_by"] == "guest-exit"


def held(d: Path) -> bytes:
    """The machine state a store-level snapshot holds, checked against its manifest (these
    bare snapshots have no run state, so ``Store.load`` would refuse them)."""
    state = (d / snap.MACHINE_STATE).read_bytes()
    entry = json.loads((d / snap.MANIFEST).read_text())["files"][snap.MACHINE_STATE]
    assert entry == {"bytes": len(state), "blake2b": snap.file_digest(d / snap.MACHINE_STATE)}
    return state


def _new_save(store: snap.Store, name: str, payload: bytes) -> Path:
    tmp = store.begin(name, force=True)
    (tmp / snap.MACHINE_STATE).write_bytes(payload)
    return tmp


@pytest.mark.parametrize("step", ["manifest", "exchange", "rename-no-exchange"])
def test_force_fails_at_each_step_and_keeps_the_old(tmp_path: Path, step: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Store.commit failing at each of its steps: the name still holds the old snapshot."""
    store = snap.Store(tmp_path)
    store.commit(_new_save(store, "s", b"old"), "s", {}, force=False)
    tmp = _new_save(store, "s", b"new")
    full = OSError(28, "No space left on device")
    if step == "manifest":
        monkeypatch.setattr(snap.json, "dump", lambda *a, **k: (_ for _ in ()).throw(full))
    elif step == "exchange":
        monkeypatch.setattr(snap, "_exchange", lambda a, b: (_ for _ in ()).throw(full))
    else:
        # a file system without RENAME_EXCHANGE, and the new one cannot take the name
        monkeypatch.setattr(snap, "_exchange", lambda a, b: False)
        real = Path.rename
        monkeypatch.setattr(Path, "rename", lambda self, target: (
            (_ for _ in ()).throw(full) if self == tmp else real(self, target)))
    with pytest.raises(OSError):
        store.commit(tmp, "s", {}, force=True)
    store.abort(tmp)
    monkeypatch.undo()
    assert held(tmp_path / "s") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


@pytest.mark.parametrize("exchange", [True, False])
def test_force_replaces_in_one_step(tmp_path: Path, exchange: bool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = snap.Store(tmp_path)
    store.commit(_new_save(store, "s", b"old"), "s", {}, force=False)
    if not exchange:
        monkeypatch.setattr(snap, "_exchange", lambda a, b: False)
    store.commit(_new_save(store, "s", b"new"), "s", {}, force=True)
    assert held(tmp_path / "s") == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


@pytest.mark.parametrize("name", ["a/b", "..", "../x", ".hidden", ""])
def test_bad_snapshot_names(tmp_path: Path, name: str) -> None:
    proc = cosim("run", "--save", name, "--max-insns", "1000", "--snapshot-dir", str(tmp_path))
    assert proc.returncode == 2 and "snapshot name" in proc.stderr


def test_failed_save_leaves_no_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that dies after QEMU wrote its state: no snapshot under the name."""
    from cosim.libqflex_bridge import Bridge, QemuConfig
    from cosim.session import RunSpec, Session
    from conftest import guest

    real = Bridge.save_machine

    def dies_half_way(self: Bridge, directory: Path) -> list[dict]:
        real(self, directory)
        assert (directory / snap.MACHINE_STATE).is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(Bridge, "save_machine", dies_half_way)
    store = snap.Store(tmp_path)
    session = Session(RunSpec(QemuConfig(kernel=guest("spinlock"), smp=2), max_insns=20_000,
                              save="dies",
                              store=store, console=tmp_path / "console.txt"))
    with pytest.raises(KeyboardInterrupt):
        session.run()
    assert not (tmp_path / "dies").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "console.txt"]


def test_killed_save_temporary_is_ignored_then_removed(saved: Path, tmp_path: Path) -> None:
    shutil.copytree(saved, tmp_path / "root")
    root = tmp_path / "root"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f".half{snap.TMP_MARK}{dead.pid}"
    shutil.copytree(root / "ok", stale)
    (stale / snap.MANIFEST).unlink()
    listing = cosim("snapshot", "list", "--snapshot-dir", str(root))
    assert listing.returncode == 0 and "half" not in listing.stdout and "ok" in listing.stdout
    assert cosim("run", "--snapshot", "half", "--snapshot-dir", str(root)).returncode == 2
    run_json("--kernel", "spinlock", "--smp", "2", "--max-insns", "20000", "--save", "half",
             "--snapshot-dir", str(root))
    assert not stale.exists() and (root / "half" / snap.MANIFEST).is_file()


def test_list_show_rm(saved: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(saved, root)
    listing = cosim("snapshot", "list", "--snapshot-dir", str(root))
    assert listing.returncode == 0
    row = [line for line in listing.stdout.splitlines() if line.startswith("ok ")]
    assert row and "100,000" in row[0]
    show = cosim("snapshot", "show", "ok", "--snapshot-dir", str(root))
    m = json.loads(show.stdout)
    assert m["verified"] and m["total_insns"] == 100_000 and m["machine"]["smp"] == 2
    assert {"machine.state", "plugin.msgpack", "run.msgpack"} <= set(m["files"])
    for key in ("cosim_version", "qemu", "guest", "command_line", "quantum", "icount_shift",
                "insns", "created"):
        assert key in m
    assert cosim("snapshot", "rm", "nope", "--snapshot-dir", str(root)).returncode == 2
    assert cosim("snapshot", "rm", "ok", "--snapshot-dir", str(root)).returncode == 0
    assert not (root / "ok").exists()


def test_snapshot_save_from_another_process(tmp_path: Path) -> None:
    """`cosim snapshot save` to a running 4-hart run; the snapshot runs to the same output."""
    d = ("--snapshot-dir", str(tmp_path))
    # long enough (about 2 s) that the save lands while it runs
    guest_args = ("--kernel", "spinlock-n1000000", "--smp", "4")
    run = subprocess.Popen([sys.executable, "-m", "cosim.cli", "run", "--json", *guest_args, *d],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        saved = None
        deadline = time.monotonic() + 60
        while saved is None and time.monotonic() < deadline:
            proc = cosim("snapshot", "save", "live", "--sim", str(run.pid))
            if proc.returncode == 0:
                saved = proc.stdout
            else:
                assert "no such run" in proc.stderr or "no cosim run" in proc.stderr, proc.stderr
                time.sleep(0.2)
        assert saved and "saved snapshot live" in saved
        out, err = run.communicate(timeout=600)
    finally:
        run.kill()
    assert run.returncode == 0, err
    original = json.loads(out)
    restored = run_json("--snapshot", "live", *d)
    manifest = json.loads((tmp_path / "live" / snap.MANIFEST).read_text())
    assert 0 < manifest["total_insns"] < original["total_insns"]
    assert restored["guest_results"] == original["guest_results"]
    assert restored["guest_results"] and restored["total_insns"] == original["total_insns"]
    assert restored["digest"] == original["digest"]


def test_mid_run_save_under_timing_changes_nothing(tmp_path: Path) -> None:
    """A save between two turns of a 4-hart timing run (QEMU paused mid-round) neither
    perturbs that run nor restores to anything but the straight run's cycles."""
    import grpc

    from cosim import control
    from cosim.v1 import control_pb2 as pb
    from cosim.v1 import control_pb2_grpc as pb_grpc

    args = ("--kernel", "spinlock-n4000", "--smp", "4", "--timing", "--snapshot-dir", str(tmp_path))
    straight = run_json(*args)
    proc = subprocess.Popen([sys.executable, "-m", "cosim.cli", "run", "--json", *args, "--paused"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        sim = line.split()[1]
        info = next(s for s in control.running_sims() if s["id"] == sim)
        with grpc.insecure_channel(f"unix:{info['socket']}") as ch:
            stub = pb_grpc.ControlStub(ch)
            while stub.GetStatus(pb.GetStatusRequest()).state != pb.Status.PAUSED:
                time.sleep(0.05)
            stub.Resume(pb.ResumeRequest())
            while stub.GetStatus(pb.GetStatusRequest()).total_insns < 800_000:
                time.sleep(0.01)
            saved = stub.SaveSnapshot(pb.SaveSnapshotRequest(name="mid"))
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert 800_000 <= saved.total_insns < straight["total_insns"] and saved.cycles > 0
    live = json.loads(out)
    restored = run_json("--snapshot", "mid", "--timing", "--snapshot-dir", str(tmp_path))
    assert outcome(live) == outcome(straight)
    assert outcome(restored) == outcome(straight)


def test_sigkill_at_any_moment_leaves_no_partial_snapshot(tmp_path: Path) -> None:
    """Kill `cosim run --save` at moments spread over its life: afterwards the name
    holds either nothing or a complete snapshot that passes every check."""
    store = snap.Store(tmp_path)

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cosim.cli", "run", "--kernel", "spinlock", "--memory", "2G",
             "--max-insns", "3000000", "--save", name, "--snapshot-dir", str(tmp_path),
             "--console", str(tmp_path / "console.txt")],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # how long a whole run takes here and now; the kills spread from a quarter of it
    # to one and a half times it, so some land before the save and some after it
    t = time.monotonic()
    assert start("whole").wait() == 0
    whole = time.monotonic() - t
    store.load("whole")
    outcomes = set()
    for k in range(8):
        name = f"k{k}"
        proc = start(name)
        time.sleep(whole * (0.25 + 0.18 * k))
        proc.kill()
        proc.wait()
        if (tmp_path / name).exists():
            store.load(name)            # raises on anything incomplete or corrupt
            outcomes.add("complete")
        else:
            outcomes.add("none")
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")
                and not (p / snap.MANIFEST).is_file()]
    assert "complete" in outcomes, "no killed run got as far as its save"
    assert "none" in outcomes, "no kill landed before the save finished"
