"""The gRPC control plane, served by a real `cosim run` (QEMU, plugin, bridge)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import REPO, cosim
from cosim import control
from cosim.trace import RECORD_DTYPE
from cosim.v1 import control_pb2 as pb
from cosim.v1 import control_pb2_grpc as pb_grpc


@pytest.fixture
def snapshot_dir(tmp_path: Path, request) -> Path:
    """The run's --snapshot-dir; parametrized "tiny": a 1 MiB tmpfs that a save overfills."""
    if getattr(request, "param", None) == "tiny":
        return request.getfixturevalue("tiny_disk")
    return tmp_path


@pytest.fixture
def paused_run(snapshot_dir: Path):
    """A 2-hart trace-mode run started paused, serving unix and TCP (port 0: any free one)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosim.cli", "run", "--json", "--kernel", "spinlock", "--smp", "2",
         "--mode", "trace", "--paused", "--listen", "127.0.0.1:0",
         "--snapshot-dir", str(snapshot_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"\(port (\d+)\), token (\S+)", line)
    assert m, line + proc.stderr.read()
    info = next(s for s in wait_for_sims(proc.pid) if s["pid"] == proc.pid)
    unix = grpc.insecure_channel(f"unix:{info['socket']}")
    tcp = grpc.insecure_channel(f"127.0.0.1:{m.group(1)}")
    stub = pb_grpc.ControlStub(unix)
    deadline = time.monotonic() + 30
    while stub.GetStatus(pb.GetStatusRequest()).state != pb.Status.PAUSED:
        assert time.monotonic() < deadline, "the run did not reach its paused start"
        time.sleep(0.05)
    yield proc, pb_grpc.ControlStub(unix), pb_grpc.ControlStub(tcp), m.group(2), info
    unix.close()
    tcp.close()
    proc.kill()
    proc.wait()


def wait_for_sims(pid: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sims = control.running_sims()
        if any(s["pid"] == pid for s in sims):
            return sims
        time.sleep(0.05)
    raise AssertionError("the run did not register its control socket")


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_bad_requests_are_rejected_and_the_server_keeps_serving(paused_run) -> None:
    proc, stub, _, _, info = paused_run
    assert stub.GetStatus(pb.GetStatusRequest()).state == pb.Status.PAUSED
    for vcpu, n in ((2, 100), (-1, 100), (99, 100), (0, 0), (1, -5)):
        assert code_of(lambda: stub.Step(pb.StepRequest(vcpu=vcpu, n=n))) == \
            grpc.StatusCode.INVALID_ARGUMENT
    for name in ("a/b", "..", "../up", ""):
        assert code_of(lambda: stub.SaveSnapshot(pb.SaveSnapshotRequest(name=name))) == \
            grpc.StatusCode.INVALID_ARGUMENT
    # too big to hold in one reply: refused before it runs
    assert code_of(lambda: stub.Step(pb.StepRequest(vcpu=0, n=control.MAX_STEP_INSNS + 1))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    for interval in (-1.0, 0.001, 1e9, float("nan")):
        stream = stub.WatchProgress(pb.WatchProgressRequest(interval_seconds=interval))
        assert code_of(lambda: next(stream)) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(stub.GetStatus(pb.GetStatusRequest()).insns) == [0, 0]
    # still serving, and a valid Step runs exactly n instructions with its trace
    resp = stub.Step(pb.StepRequest(vcpu=1, n=500))
    assert [(t.vcpu, t.executed) for t in resp.turns] == [(1, 500)]
    recs = np.frombuffer(resp.turns[0].records, dtype=RECORD_DTYPE)
    assert len(recs) > 0 and recs["idx"].max() < 500
    assert list(resp.status.insns) == [0, 500]
    st = stub.Resume(pb.ResumeRequest())
    assert st.state == pb.Status.RUNNING
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "guest-exit" and summary["guest_results"]
    assert not Path(info["socket"]).exists(), "the socket should go with the run"


@pytest.mark.parametrize("snapshot_dir", ["tiny"], indirect=True)
def test_a_failed_save_is_an_error_status_and_the_run_goes_on(paused_run, snapshot_dir) -> None:
    proc, stub, _, _, _ = paused_run
    with pytest.raises(grpc.RpcError) as e:
        stub.SaveSnapshot(pb.SaveSnapshotRequest(name="s"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "snapshot s not saved" in e.value.details() and "No space left" in e.value.details()
    assert stub.GetStatus(pb.GetStatusRequest()).state == pb.Status.PAUSED
    assert list(snapshot_dir.iterdir()) == []        # no half-written snapshot
    stub.Resume(pb.ResumeRequest())
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["stopped_by"] == "guest-exit"


def test_tcp_needs_the_token(paused_run) -> None:
    proc, unix, tcp, token, _ = paused_run
    assert code_of(lambda: tcp.Stop(pb.StopRequest())) == grpc.StatusCode.UNAUTHENTICATED
    bad = (("authorization", "Bearer not-the-token"),)
    assert code_of(lambda: tcp.Stop(pb.StopRequest(), metadata=bad)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert proc.poll() is None
    assert unix.GetStatus(pb.GetStatusRequest()).state == pb.Status.PAUSED
    good = (("authorization", f"Bearer {token}"),)
    assert tcp.GetStatus(pb.GetStatusRequest(), metadata=good).vcpus == 2
    tcp.Stop(pb.StopRequest(), metadata=good)
    out, _ = proc.communicate(timeout=60)
    assert json.loads(out)["stopped_by"] == "control-stop"


def test_cli_clients_take_the_token_from_the_environment_or_a_private_file(
        paused_run, tmp_path: Path) -> None:
    proc, _, _, token, info = paused_run
    tcp = ("--connect", f"127.0.0.1:{info['port']}", "--json")
    bad = cosim("status", *tcp, env={"COSIM_TOKEN": "not-the-token"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unauthenticated" in bad.stderr
    assert json.loads(cosim("status", *tcp, env={"COSIM_TOKEN": token}).stdout)["vcpus"] == 2
    f = tmp_path / "token"
    f.write_text(token + "\n")
    f.chmod(0o644)
    loose = cosim("status", *tcp, "--token-file", str(f))
    assert loose.returncode == 2 and f"chmod 600 {f}" in loose.stderr, loose.stderr
    f.chmod(0o600)
    assert json.loads(cosim("status", *tcp, "--token-file", str(f)).stdout)["vcpus"] == 2
    # a run of the same user on this machine: its info file has the token
    assert json.loads(cosim("status", *tcp).stdout)["state"] == "PAUSED"
    assert "--token" not in " ".join(open(f"/proc/{proc.pid}/cmdline").read().split("\0"))


@pytest.mark.parametrize("damage", ["symlink", "mode", "owner"])
def test_an_unsafe_runtime_directory_is_refused(tmp_path: Path, damage: str) -> None:
    rt = tmp_path / "rt"
    rt.mkdir()
    d = rt / "cosim"
    if damage == "symlink":
        (tmp_path / "theirs").mkdir(mode=0o700)
        d.symlink_to(tmp_path / "theirs")
    else:
        d.mkdir(mode=0o700)
        if damage == "mode":
            d.chmod(0o755)
        else:
            os.chown(d, 65534, 65534)
    proc = cosim("status", env={"XDG_RUNTIME_DIR": str(rt)})
    assert proc.returncode == 2, proc.stderr
    want = {"symlink": "is a symlink", "mode": "has mode 0755", "owner": "belongs to uid 65534"}
    assert proc.stderr.count("\n") == 1 and want[damage] in proc.stderr, proc.stderr


def test_a_fresh_runtime_directory_is_private(tmp_path: Path) -> None:
    proc = cosim("status", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert proc.returncode == 2 and "no cosim run is going" in proc.stderr
    assert (tmp_path / "cosim").stat().st_mode & 0o777 == 0o700


def test_cli_clients_and_progress_stream(paused_run) -> None:
    proc, stub, _, _, info = paused_run
    sim = ("--sim", info["id"])
    status = cosim("status", *sim, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "PAUSED"
    # watch from before the resume: the run may end before a later call connects
    stream = stub.WatchProgress(pb.WatchProgressRequest(interval_seconds=0.05))
    first = next(stream)
    assert first.state == pb.Status.PAUSED
    assert cosim("resume", *sim).returncode == 0
    watched = [first, *stream]
    assert watched[-1].state == pb.Status.FINISHED
    totals = [s.total_insns for s in watched]
    assert totals == sorted(totals) and totals[-1] > 0
    out, _ = proc.communicate(timeout=60)
    assert json.loads(out)["total_insns"] == totals[-1]
    gone = cosim("status", *sim)
    assert gone.returncode == 2 and "no such run" in gone.stderr


def test_stubs_match_the_proto(tmp_path: Path) -> None:
    """cosim/v1 is checked in; it must be what grpcio-tools makes of the .proto now."""
    from grpc_tools import protoc
    rc = protoc.main(["protoc", f"-I{REPO / 'protos'}", f"--python_out={tmp_path}",
                      f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                      str(REPO / "protos" / "cosim" / "v1" / "control.proto")])
    assert rc == 0
    for name in ("control_pb2.py", "control_pb2.pyi", "control_pb2_grpc.py"):
        assert (tmp_path / "cosim" / "v1" / name).read_text() == \
            (REPO / "cosim" / "v1" / name).read_text(), f"regenerate {name} (see the .proto)"


def test_chmu_samples_stream_what_the_sample_file_holds(tmp_path: Path) -> None:
    """WatchChmuSamples gives a host-side daemon each epoch's samples: the same rows, in
    the same order, as --chmu samples=FILE writes in that run. (Every 15th access: GUPS
    alternates a miss and a dirty eviction, so every 16th would see reads only.)"""
    csv = tmp_path / "samples.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosim.cli", "run", "--json", "--kernel", "gups-ws64m-n2m",
         "--smp", "1", "--timing", "--preset", "cxl-direct", "--max-insns", "20000000",
         "--chmu", f"tracker=space-saving+sample,sample-every=15,epoch=200us,samples={csv}",
         "--paused", "--snapshot-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = next(s for s in wait_for_sims(proc.pid) if s["pid"] == proc.pid)
        with grpc.insecure_channel(f"unix:{info['socket']}") as channel:
            stub = pb_grpc.ControlStub(channel)
            stream = stub.WatchChmuSamples(pb.WatchChmuSamplesRequest())
            time.sleep(0.5)     # the subscription is in place before the run starts
            stub.Resume(pb.ResumeRequest())
            batches = list(stream)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    epochs = json.loads(out)["timing"]["chmu"]["epochs"]
    assert epochs >= 5 and [b.epoch for b in batches] == list(range(epochs))
    streamed = [f"{b.epoch},{t},{a:#x},{w}" for b in batches
                for t, a, w in zip(b.time_ns, b.address, b.types)]
    assert len(streamed) > 1000 and set("".join(b.types for b in batches)) == {"r", "w"}
    assert streamed == csv.read_text().splitlines()[1:]
    ends = [b.end_cycles for b in batches]
    assert ends == sorted(ends) and all(b.dropped == 0 for b in batches)


def test_chmu_samples_need_a_sample_tracker(paused_run) -> None:
    _, stub, _, _, _ = paused_run
    with pytest.raises(grpc.RpcError) as e:
        next(stub.WatchChmuSamples(pb.WatchChmuSamplesRequest()))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tracker=...+sample" in e.value.details()
