"""The gRPC control plane (protos/cosim/v1/control.proto) of a running simulation.

gRPC calls arrive on server threads; the simulation runs on the main
thread and only it touches the bridge. So a call that changes the run
(Pause, Resume, Step, SaveSnapshot, Stop, GetStats) is queued and carried
out by ``Controller.poll()``, which the session calls between two bridge
reports; the caller waits for its result. GetStatus and ListSnapshots are
answered at once from a copy the session publishes.

Access: the unix socket lives in a 0700 directory of the user's runtime
directory, mode 0600, so only the user reaches it. ``--listen HOST:PORT``
adds a TCP port on which every call needs ``authorization: Bearer TOKEN``;
the token is random per run, printed once and kept in the run's 0600 info
file, which is how local clients find runs (``--sim ID``) and the token of
a local TCP port. Clients take a token from ``--token-file`` (0600) or
``COSIM_TOKEN``, never from argv, which every user of the machine can read.
The runtime directory must be the user's own, 0700, and not a symlink.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import secrets
import stat
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

# QEMU is started with fork+exec while gRPC threads run; gRPC's fork
# handlers are not needed for that and only log a warning
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
# gRPC's C core logs its own errors to stderr (a failed bind, say); cosim
# reports the ones that matter in one line of its own
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402

from . import interrupts, quantum
from . import snapshot as snap
from .errors import CosimError
from .v1 import control_pb2 as pb
from .v1 import control_pb2_grpc as pb_grpc

GRPC_WORKERS = 8
#: bytes of a unix socket path, without its NUL (sockaddr_un.sun_path is 108)
UNIX_PATH_MAX = 107
POLL_PAUSED_S = 0.2
REQUEST_TIMEOUT_S = 600.0
#: Step's largest n: its records (about two of 16 bytes per instruction in
#: trace mode) come back in one message, and the run holds them until then
MAX_STEP_INSNS = 1 << 20
#: messages our clients accept (gRPC's default is 4 MiB; a largest Step is ~32 MiB)
MAX_MESSAGE_BYTES = 64 << 20
#: epochs a WatchChmuSamples client may fall behind; the run then waits for it, up
#: to SAMPLES_WAIT_S, and drops the client after that (its stream ends with an error)
SAMPLES_QUEUE, SAMPLES_WAIT_S = 256, 30.0
#: WatchProgress intervals: 0 means the default
WATCH_DEFAULT_S, WATCH_MIN_S, WATCH_MAX_S = 1.0, 0.05, 3600.0
_STATES = {"running": pb.Status.RUNNING, "paused": pb.Status.PAUSED,
           "finished": pb.Status.FINISHED, "starting": pb.Status.STARTING}


def runtime_dir() -> Path:
    """Private directory for run sockets and info files (created 0700):
    ``$XDG_RUNTIME_DIR/cosim``, else ``/tmp/cosim-UID``.

    One that already exists must be a real directory of this user, mode
    0700: in a shared /tmp another user could have made it first (or a
    symlink to a directory of theirs) to receive the sockets and tokens.
    """
    candidates = [Path(tempfile.gettempdir()) / f"cosim-{os.getuid()}"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.insert(0, Path(os.environ["XDG_RUNTIME_DIR"]) / "cosim")
    for base in candidates:
        try:
            base.mkdir(mode=0o700, parents=True)
            os.chmod(base, 0o700, follow_symlinks=False)    # whatever the umask
        except FileExistsError:
            pass
        except OSError:
            continue
        return _private(base)
    raise CosimError("no writable runtime directory for the control socket; set "
                     "XDG_RUNTIME_DIR to a directory of yours")


def _private(base: Path) -> Path:
    """``base`` if only this user can reach it, else a one-line refusal saying what to fix."""
    st = os.lstat(base)
    fix = "remove it, or set XDG_RUNTIME_DIR to a directory of yours"
    if stat.S_ISLNK(st.st_mode):
        raise CosimError(f"runtime directory {base} is a symlink; cosim keeps control sockets "
                         f"only in a real directory ({fix})")
    if not stat.S_ISDIR(st.st_mode):
        raise CosimError(f"runtime directory {base} is not a directory ({fix})")
    if st.st_uid != os.getuid():
        raise CosimError(f"runtime directory {base} belongs to uid {st.st_uid}, not to you "
                         f"(uid {os.getuid()}) ({fix})")
    if st.st_mode & 0o077:
        raise CosimError(f"runtime directory {base} has mode {stat.S_IMODE(st.st_mode):04o}; "
                         f"it must be 0700 (chmod 700 {base})")
    return base


class RequestError(Exception):
    """A request the run refuses: carries the gRPC status code to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Request:
    kind: str
    args: dict
    result: futures.Future


class SampleHub:
    """The CHMU's sample batches, from the simulation thread to each WatchChmuSamples client.

    Each client has a bounded queue. A client that falls behind makes the
    run wait (the results cannot depend on it: time is simulated), and one
    that stops reading for SAMPLES_WAIT_S is dropped rather than stall the
    run for good.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[queue.Queue] = []
        self._closed = False

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=SAMPLES_QUEUE)
        with self._lock:
            if self._closed:
                q.put(None)
            else:
                self._queues.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._queues:
                self._queues.remove(q)

    def publish(self, batch: object) -> None:
        """(simulation thread) One epoch's samples to every client."""
        with self._lock:
            queues = list(self._queues)
        for q in queues:
            try:
                q.put(batch, timeout=SAMPLES_WAIT_S)
            except queue.Full:
                self.unsubscribe(q)
                _put_end(q, RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                         f"the client read no samples for {SAMPLES_WAIT_S:g} s "
                                         f"with {SAMPLES_QUEUE} epochs waiting; dropped"))

    def close(self) -> None:
        """The run ended: every stream ends after what it has."""
        with self._lock:
            self._closed = True
            queues, self._queues = self._queues, []
        for q in queues:
            _put_end(q, None)


def _put_end(q: queue.Queue, end: object) -> None:
    """Put a stream's last item, making room for it if the queue is full."""
    while True:
        try:
            q.put_nowait(end)
            return
        except queue.Full:
            try:
                q.get_nowait()
            except queue.Empty:
                pass


class Controller:
    """The queue between gRPC threads and the simulation thread."""

    def __init__(self, session) -> None:  # session: cosim.session.Session
        self.session = session
        self._requests: queue.Queue[_Request] = queue.Queue()
        self.paused = False
        self.finished = False
        self.samples = SampleHub()

    # -- gRPC threads ------------------------------------------------------

    def call(self, kind: str, **args: object) -> object:
        """Queue a request for the simulation thread and wait for its result."""
        if self.finished:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "the run has finished")
        req = _Request(kind, args, futures.Future())
        self._requests.put(req)
        return req.result.result(timeout=REQUEST_TIMEOUT_S)

    # -- simulation thread -------------------------------------------------

    def poll(self) -> bool:
        """Carry out queued requests (and wait while paused); True means stop the run."""
        while True:
            try:
                req = self._requests.get(block=self.paused, timeout=POLL_PAUSED_S)
            except queue.Empty:
                if self.paused:
                    continue
                return False
            if self._handle(req):
                return True

    def pending(self) -> bool:
        """A request is queued, or the run is paused: the bridge must stay idle."""
        return self.paused or not self._requests.empty()

    def serve_paused(self) -> bool:
        """Start paused (``cosim run --paused``): wait for Resume or Stop."""
        self._set_paused(True)
        return self.poll()

    def finish(self) -> None:
        """The run ended: refuse what is still queued, end the sample streams."""
        self.finished = True
        self.samples.close()
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                return
            req.result.set_exception(
                RequestError(grpc.StatusCode.FAILED_PRECONDITION, "the run has finished"))

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.session.state = "paused" if paused else "running"
        self.session._publish()

    def _handle(self, req: _Request) -> bool:
        stop = False
        try:
            if req.kind == "pause":
                self._set_paused(True)
                result: object = self.session.status()
            elif req.kind == "resume":
                self._set_paused(False)
                result = self.session.status()
            elif req.kind == "stop":
                self.paused = False
                stop = True
                result = self.session.status()
            elif req.kind == "step":
                result = self._step(**req.args)
            elif req.kind == "save":
                try:
                    result = self.session.save(req.args["name"], req.args["force"])
                except CosimError as e:
                    code = (grpc.StatusCode.ALREADY_EXISTS if "already exists" in str(e)
                            else grpc.StatusCode.FAILED_PRECONDITION)
                    raise RequestError(code, str(e)) from None
            elif req.kind == "stats":
                result = self.session.summary()
            else:
                raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"unknown request {req.kind}")
        except BaseException as e:
            req.result.set_exception(e)
            if not isinstance(e, (RequestError, CosimError)):
                raise
            return False
        req.result.set_result(result)
        return stop

    def _step(self, vcpu: int, n: int) -> tuple[list, dict]:
        if not self.paused:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               "Step needs a paused run (call Pause first)")
        if self.session.spec.timing is not None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               "this run's own timing model drives the bridge; "
                               "start it without --timing to step it from outside")
        if self.session.bridge.exited:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "the guest has exited")
        report = quantum.step(self.session.bridge, self.session.schedule, vcpu, n)
        turns = [(t.vcpu, t.budget, t.executed, t.halted, t.icount,
                  t.records.tobytes() if t.records is not None else b"")
                 for t in report.turn_list]
        if not turns and report.last is not None:
            t = report.last
            turns = [(t.vcpu, t.budget, t.executed, t.halted, t.icount, b"")]
        self.session._publish()
        return turns, self.session.status()


def status_message(sim_id: str, s: dict) -> pb.Status:
    return pb.Status(
        sim_id=sim_id, state=_STATES.get(s.get("state", ""), pb.Status.STATE_UNSPECIFIED),
        kernel=s.get("kernel", ""), vcpus=s.get("vcpus", 0), quantum=s.get("quantum", 0),
        mode=s.get("mode", ""), insns=s.get("insns", []), total_insns=s.get("total_insns", 0),
        max_insns=s.get("max_insns", 0), mips=s.get("mips", 0.0),
        wall_seconds=s.get("wall_seconds", 0.0), timing=s.get("timing", False),
        cycles=s.get("cycles", 0), snapshot=s.get("snapshot", ""),
        stopped_by=s.get("stopped_by", ""))


def snapshot_info(s: snap.Snapshot) -> pb.SnapshotInfo:
    m = s.manifest
    return pb.SnapshotInfo(
        name=s.name, path=str(s.path), created=m.get("created", ""),
        kernel=m.get("guest", {}).get("kernel", ""), vcpus=m.get("machine", {}).get("smp", 0),
        quantum=m.get("quantum", 0), total_insns=m.get("total_insns", 0),
        cycles=m.get("cycles") or 0, has_timing=s.has_timing,
        bytes_on_disk=snap.size_on_disk(s.path))


class Servicer(pb_grpc.ControlServicer):
    """Validates requests, checks the token on TCP, and hands work to the Controller."""

    def __init__(self, controller: Controller, sim_id: str, token: str | None) -> None:
        self.c = controller
        self.sim_id = sim_id
        self.token = token

    def _guard(self, context: grpc.ServicerContext) -> None:
        peer = context.peer() or ""
        if peer.startswith("unix:"):
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        if self.token is None or not secrets.compare_digest(given, f"Bearer {self.token}"):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "this run needs 'authorization: Bearer TOKEN' over TCP")

    def _do(self, context: grpc.ServicerContext, fn: Callable[[], object]) -> object:
        self._guard(context)
        try:
            return fn()
        except RequestError as e:
            context.abort(e.code, str(e))
        except CosimError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except futures.TimeoutError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the run did not answer in time")

    def _status(self) -> pb.Status:
        return status_message(self.sim_id, self.c.session.status())

    def GetStatus(self, request, context):
        return self._do(context, self._status)

    def Pause(self, request, context):
        return self._do(context, lambda: status_message(self.sim_id, self.c.call("pause")))

    def Resume(self, request, context):
        return self._do(context, lambda: status_message(self.sim_id, self.c.call("resume")))

    def Stop(self, request, context):
        return self._do(context, lambda: status_message(self.sim_id, self.c.call("stop")))

    def Step(self, request, context):
        self._guard(context)
        nvcpus = self.c.session.config.smp
        if not 0 <= request.vcpu < nvcpus:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"vcpu {request.vcpu}: this run has vCPUs 0..{nvcpus - 1}")
        if not 0 < request.n <= MAX_STEP_INSNS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"n {request.n}: must be 1..{MAX_STEP_INSNS} (a Step's trace comes "
                          "back in one message; step again for more)")

        def step() -> pb.StepResponse:
            turns, status = self.c.call("step", vcpu=request.vcpu, n=request.n)
            return pb.StepResponse(
                turns=[pb.Turn(vcpu=v, budget=b, executed=e, halted=h, icount=i, records=r)
                       for v, b, e, h, i, r in turns],
                status=status_message(self.sim_id, status))
        return self._do(context, step)

    def SaveSnapshot(self, request, context):
        self._guard(context)
        try:
            snap.check_name(request.name)
        except CosimError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return self._do(context, lambda: snapshot_info(
            self.c.call("save", name=request.name, force=request.force)))

    def ListSnapshots(self, request, context):
        def listing() -> pb.ListSnapshotsResponse:
            found = [s for s in self.c.session.spec.store.list() if isinstance(s, snap.Snapshot)]
            return pb.ListSnapshotsResponse(snapshots=[snapshot_info(s) for s in found])
        return self._do(context, listing)

    def GetStats(self, request, context):
        def stats() -> pb.Stats:
            summary = self.c.session.final_summary or self.c.call("stats")
            return pb.Stats(json=json.dumps(summary))
        return self._do(context, stats)

    def WatchChmuSamples(self, request, context) -> Iterator[pb.ChmuSamples]:
        self._guard(context)
        cfg = self.c.session.spec.timing
        if cfg is None or not cfg.chmu.enabled or "sample" not in cfg.chmu.tracker.split("+"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this run has no CHMU sample tracker (cosim run --timing --chmu "
                          "tracker=...+sample)")
        q = self.c.samples.subscribe()
        try:
            while context.is_active():
                try:
                    batch = q.get(timeout=POLL_PAUSED_S)
                except queue.Empty:
                    continue
                if batch is None:
                    return
                if isinstance(batch, RequestError):
                    context.abort(batch.code, str(batch))
                yield pb.ChmuSamples(epoch=batch.epoch, end_cycles=batch.end_cycles,
                                     time_ns=batch.time_ns, address=batch.address,
                                     types=batch.types, dropped=batch.dropped)
        finally:
            self.c.samples.unsubscribe(q)

    def WatchProgress(self, request, context) -> Iterator[pb.Status]:
        self._guard(context)
        interval = request.interval_seconds or WATCH_DEFAULT_S
        if not WATCH_MIN_S <= interval <= WATCH_MAX_S:      # NaN fails too
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"interval_seconds {request.interval_seconds}: want 0 (every "
                          f"{WATCH_DEFAULT_S:g} s) or {WATCH_MIN_S:g}..{WATCH_MAX_S:g}")
        while context.is_active():
            status = self._status()
            yield status
            if status.state == pb.Status.FINISHED:
                return
            time.sleep(interval)


class ControlServer:
    """The gRPC server of one run, and its info file for local clients."""

    def __init__(self, session, listen: str | None = None) -> None:
        self.controller = Controller(session)
        self.dir = runtime_dir()
        self.sim_id = _sim_id(self.dir, Path(session.config.kernel).stem, os.getpid())
        self.socket = self.dir / f"{self.sim_id}.sock"
        self.info_path = self.dir / f"{self.sim_id}.json"
        self.listen = listen
        self.token = secrets.token_urlsafe(24) if listen else None
        self.port: int | None = None
        self._emergency: int | None = None   # token of _remove_files with cosim.interrupts
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS))
        pb_grpc.add_ControlServicer_to_server(
            Servicer(self.controller, self.sim_id, self.token), self._server)
        session.controller = self.controller

    def start(self) -> "ControlServer":
        self.socket.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server.add_insecure_port(f"unix:{self.socket}")
            if self.listen:
                try:
                    self.port = self._server.add_insecure_port(self.listen)
                except RuntimeError:   # grpcio >= 1.50 raises where older ones returned 0
                    self.port = 0
                if not self.port:
                    self.socket.unlink(missing_ok=True)
                    raise CosimError(f"--listen {self.listen}: cannot bind it (in use, or not "
                                     "an address of this machine); want HOST:PORT on a free "
                                     "port, e.g. 127.0.0.1:50051")
            self._server.start()
        finally:
            os.umask(old)
        os.chmod(self.socket, 0o600)
        info = {"id": self.sim_id, "pid": os.getpid(), "socket": str(self.socket),
                "listen": self.listen, "port": self.port, "token": self.token,
                "kernel": str(self.controller.session.config.kernel), "started": snap.now_iso()}
        fd = os.open(self.info_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        self._emergency = interrupts.register(self._remove_files)
        return self

    def stop(self) -> None:
        self.controller.finish()
        self._server.stop(grace=1.0).wait(2.0)
        self._remove_files()
        if self._emergency is not None:
            interrupts.unregister(self._emergency)

    def _remove_files(self) -> None:
        """The socket and info file go with the run (also cosim.interrupts' emergency cleanup)."""
        self.socket.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` only listens on this machine (localhost or a loopback address)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sim_id(directory: Path, stem: str, pid: int) -> str:
    """``STEM-PID``, the stem shortened so that the run's socket path fits a unix address."""
    room = UNIX_PATH_MAX - len(str(directory / f"-{pid}.sock"))
    if room < 8:
        raise CosimError(f"runtime directory {directory} is too long for a unix socket path "
                         f"(at most {UNIX_PATH_MAX} bytes); set XDG_RUNTIME_DIR to a shorter one")
    return f"{stem.encode()[:room].decode(errors='ignore')}-{pid}"


# -- clients -----------------------------------------------------------------

def running_sims() -> list[dict]:
    """Info of every run of this user whose process is alive (a killed run's files go)."""
    out = []
    for p in sorted(runtime_dir().glob("*.json")):
        try:
            info = json.loads(p.read_text())
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
            p.with_suffix(".sock").unlink(missing_ok=True)
            continue
        except (OSError, ValueError, KeyError):
            continue
        out.append(info)
    return out


@dataclass
class Client:
    stub: pb_grpc.ControlStub
    metadata: tuple
    channel: grpc.Channel

    def close(self) -> None:
        self.channel.close()


def client_token(address: str, token_file: Path | None) -> str | None:
    """The token for a TCP run: ``token_file``, else ``$COSIM_TOKEN``, else the info file of a
    run of this user on this machine serving that port; never a command-line argument (other
    users see argv in ps)."""
    if token_file is not None:
        try:
            st = os.stat(token_file)
            if st.st_mode & 0o077:
                raise CosimError(f"--token-file {token_file}: mode {stat.S_IMODE(st.st_mode):04o} "
                                 f"lets others read it; chmod 600 {token_file}")
            return token_file.read_text().strip()
        except OSError as e:
            raise CosimError(f"--token-file {token_file}: {e.strerror}") from None
    if os.environ.get("COSIM_TOKEN"):
        return os.environ["COSIM_TOKEN"].strip()
    port = address.rpartition(":")[2]
    for info in running_sims():
        if info.get("token") and str(info.get("port")) == port:
            return info["token"]
    return None


def connect(sim: str | None = None, address: str | None = None,
            token_file: Path | None = None) -> Client:
    """A client of the run ``sim`` (id or pid), of the only run going, or of a TCP address."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if address:
        channel = grpc.insecure_channel(address, options=options)
        token = client_token(address, token_file)
        meta = (("authorization", f"Bearer {token}"),) if token else ()
        return Client(pb_grpc.ControlStub(channel), meta, channel)
    sims = running_sims()
    if sim is not None:
        sims = [s for s in sims if sim in (s["id"], str(s["pid"]))]
        if not sims:
            raise CosimError(f"--sim {sim}: no such run going (running: "
                             f"{', '.join(s['id'] for s in running_sims()) or 'none'})")
    if not sims:
        raise CosimError("no cosim run is going (start one with `cosim run`)")
    if len(sims) > 1:
        raise CosimError("several runs are going: " + ", ".join(s["id"] for s in sims)
                         + "; pick one with --sim ID")
    channel = grpc.insecure_channel(f"unix:{sims[0]['socket']}", options=options)
    return Client(pb_grpc.ControlStub(channel), (), channel)
