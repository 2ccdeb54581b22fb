"""One simulation: QEMU through the bridge, the schedule, the timing model,
snapshots, and the hook the control plane uses between reports.

``cosim run`` builds a ``RunSpec`` and calls ``Session.run()``. Between two
bridge reports (a turn boundary, and with round-robin a round boundary) the
session is in a consistent state: QEMU waits for a command, the schedule
and digest have accounted every finished turn and the timing model has
consumed them. That is where it saves snapshots and serves control
requests (``control.Controller``), so neither ever sees half a turn.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import msgpack

from . import __version__, paths
from . import snapshot as snap
from .boards import MemoryMap
from .errors import CosimError
from .libqflex_bridge import Bridge, QemuConfig, Report, qemu_binary
from .chmu_device import Device
from .linux_machine import CHMU_FILE, CHMU_TYPE3_FILE, LinuxBoard
from .progress import Progress
from .quantum import Schedule, run_round_robin
from .timing import chmu, chmu_monitor
from .timing import config as timing_config
from .timing import core
from .timing import persist
from .timing import state as timing_state
from .timing import stats as timing_stats
from .timing.config import Config
from .timing.engine import TimingRun
from .timing.rounds import RoundRun
from .timing.memory import TICKS_PER_CYCLE
from .timing.timeline import Timeline

if TYPE_CHECKING:
    from .control import Controller

RESULT_LINE = re.compile(r"^RESULT .*$", re.M)
#: how often a run refreshes its progress line and the status the control plane serves
PUBLISH_EVERY_S = 0.05


def _image_packages(initrd: Path) -> dict[str, str]:
    """The Debian package versions the guest image was built from (its manifest's record)."""
    try:
        return dict(json.loads((initrd.parent / "manifest.json").read_text())["packages"])
    except (OSError, ValueError, KeyError):
        return {}


@dataclass
class RunSpec:
    """Everything a run is made of; from the command line, or from a snapshot plus overrides."""

    machine: QemuConfig                 # guest, vCPUs, quantum, mode, RAM, icount shift
    max_insns: int | None = None        # instructions to run in this session
    timing: Config | None = None
    preset: str | None = None
    config_file: Path | None = None
    warmup: int = 0                     # timing without saved timing state: warm-up instructions
    #: under timing: "exact" steps one vCPU per command (engine), "round" several (rounds);
    #: None: the restored snapshot's order, else "round" (see Session.order)
    order: str | None = None
    save: str | None = None             # snapshot name to save at the end
    force: bool = False
    store: snap.Store = field(default_factory=snap.Store)
    snapshot: snap.Snapshot | None = None   # restore from this
    console: TextIO | Path | None = None
    paused: bool = False                # start paused (wait for the control plane)
    until_marker: str | None = None     # stop at the first report after the console shows it
    timeline_ns: int = 0                # under timing: traffic per interval of this many ns


class Session:
    """A running simulation (see module docstring)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.config = spec.machine
        self.config.loadext = spec.snapshot.path if spec.snapshot else None
        # under the timing model the guest's clocks follow simulated time
        self.config.clock = "model" if spec.timing is not None else "icount"
        self.bridge = Bridge(self.config, console=spec.console)
        self.schedule = Schedule(self.config.smp)
        self.model: timing_state.Model | None = None
        self._memory: MemoryMap | None = None     # the board's, as the model was built on
        self.engine: TimingRun | None = None
        self.controller: Controller | None = None
        self.state = "starting"
        self.stopped_by = ""
        self.notes: list[str] = []          # what a restore changed or left cold
        self.saved: list[snap.Snapshot] = []
        self.time_base = 0                  # ticks at the end of a warm-up
        self._resume_engine: dict | None = None   # TimingRun.state() of a restored snapshot
        self._start_insns = 0
        self._started = time.monotonic()
        self._stop = False
        self._lock = threading.Lock()
        self._status: dict = {}
        self._progress: Progress | None = None
        self._published = 0.0               # monotonic time of the last refresh
        self._console_pos = 0
        self._marker_pending = False        # _hold saw the marker; _on_report stops
        self.marker_seen = False
        self.final_summary: dict | None = None
        self._publish()

    # -- the run -------------------------------------------------------------

    def run(self) -> dict:
        """Run to the end (guest exit, limit, or a Stop request); returns the summary."""
        spec = self.spec
        with self.bridge:
            if spec.snapshot is not None:
                self._restore(spec.snapshot)
            self._start_insns = self.schedule.total
            limit = None if spec.max_insns is None else self._start_insns + spec.max_insns
            self._progress = Progress(spec.max_insns, start=self._start_insns)
            self._started = time.monotonic()
            self.state = "paused" if spec.paused else "running"
            self._publish()
            try:
                if spec.paused and self.controller is not None:
                    self._stop = self.controller.serve_paused()
                if not self._stop:
                    if spec.timing is not None:
                        self._run_timing(limit)
                    else:
                        run_round_robin(self.bridge, self.schedule, max_insns=limit,
                                        on_report=self._on_report,
                                        whole_rounds=spec.save is not None)
                if spec.until_marker is not None and not self.marker_seen:
                    raise CosimError(
                        f"the guest {'exited' if self.schedule.exited else 'stopped'} after "
                        f"{self.schedule.total:,} instructions without printing "
                        f"{spec.until_marker}; nothing was saved (console: "
                        f"{self.bridge.console_path})")
                if spec.save is not None:
                    if self.schedule.exited:
                        raise CosimError(
                            f"--save {spec.save}: the guest exited after "
                            f"{self.schedule.total:,} instructions, before the save point; "
                            "nothing was saved (lower --max-insns)")
                    self.save(spec.save, spec.force)
            finally:
                self._progress.close()
            self.stopped_by = ("guest-exit" if self.schedule.exited else
                               "ready-marker" if self.marker_seen else
                               "control-stop" if self._stop else
                               "all-halted" if self.engine is not None and self.engine.stalled
                               else "max-insns")
            if self.stopped_by == "all-halted":
                self.notes.append("every vCPU halted with no timer armed: nothing could wake "
                                  "the guest, so the run ended")
            self.state = "finished"
            summary = self.summary()
            self.final_summary = summary
            self._publish()
        return summary

    def _run_timing(self, limit: int | None) -> None:
        spec = self.spec
        assert spec.timing is not None
        resume = None
        if self.model is None:
            self.model = self._build_model()
            if spec.snapshot is not None and spec.warmup > 0:
                warm = self._engine_class()(self.bridge, self.schedule, self.model,
                                 self.schedule.total + spec.warmup,
                                 on_report=self._on_report, whole_turns=True,
                                 hold=self._hold, on_progress=self._on_progress)
                warm.run()
                resume = warm.state()
                self.time_base = int(self.model.K.scal[:, core.T_TIME].max())
                timing_state.reset_counters(self.model)
                self.notes.append(f"warmed up the caches for {spec.warmup:,} instructions "
                                  f"({self.time_base // TICKS_PER_CYCLE:,} cycles, not counted)")
                self._start_insns = self.schedule.total
                if limit is not None:
                    limit += spec.warmup
        else:
            resume = self._resume_engine
        self._attach_chmu()
        self.engine = self._engine_class()(self.bridge, self.schedule, self.model, limit,
                                on_report=self._on_report, whole_turns=spec.save is not None,
                                resume=resume, hold=self._hold, on_progress=self._on_progress)
        if spec.timeline_ns > 0:
            self.engine.timeline = Timeline(self.model, spec.timeline_ns,
                                            int(self.model.K.scal[:, core.T_TIME].max()))
        if not (self._stop or self.schedule.exited):
            self.engine.run()

    def _attach_chmu(self) -> None:
        """Give the CHMU its guest-visible registers, where the board has the device."""
        monitor = self.model.chmu if self.model is not None else None
        if monitor is None or monitor.device is not None:
            return
        board = self.config.board
        if not isinstance(board, LinuxBoard) or not board.chmu_device:
            self.notes.append("the guest has no CHMU device (a bare-metal guest, or a Linux "
                              "guest booted before it had one): hot lists are reported here only")
            return
        run_dir = self.bridge.command_file.parent
        window = self._memory.type3 if board.has_type3_chmu and self._memory else None
        # the cxl-type3 window's instance is in the device's own block, the rest in the
        # PCI device's
        type3 = [i for i, (lo, hi) in enumerate(monitor.ranges)
                 if window is not None and window[0] <= lo and hi <= window[0] + window[1]]
        blocks = [(run_dir / CHMU_FILE, [i for i in range(len(monitor.ranges)) if i not in type3])]
        if window is not None:
            blocks.append((run_dir / CHMU_TYPE3_FILE, type3))
        monitor.device = Device(blocks, monitor)
        monitor.publish = True

    @property
    def order(self) -> str:
        """The order of turns: the one asked for, else the snapshot's (so that a
        continuation is the straight run's), else round order (the fast one)."""
        if self.spec.order is not None:
            return self.spec.order
        return str((self._resume_engine or {}).get("order", "round"))

    def _engine_class(self) -> type[TimingRun]:
        return RoundRun if self.order == "round" else TimingRun

    def _build_model(self) -> timing_state.Model:
        assert self.spec.timing is not None
        c = self.config
        memory = self._memory = c.machine.memory_map(lambda: self.bridge.hmp("info mtree -f"))
        cfg = self.spec.timing
        if memory.cxl:
            # the board's CXL memory is served by the CXL controllers
            cfg = replace(cfg, memory=replace(cfg.memory, ranges=tuple(cfg.memory.ranges) + tuple(
                (start, size, "cxl") for start, size in memory.cxl)))
        model = timing_state.build(cfg, c.smp, memory.ram, roi=c.machine.roi())
        if model.chmu is not None and self.controller is not None:
            # the control plane's WatchChmuSamples streams
            model.chmu.listeners.append(self.controller.samples.publish)
        return model

    def _on_progress(self, report: Report) -> None:
        """Progress and the published status, every ``PUBLISH_EVERY_S`` of wall time.

        Not at every report: a report can be one turn.
        """
        assert self._progress is not None
        now = time.monotonic()
        if now - self._published >= PUBLISH_EVERY_S:
            self._published = now
            self._progress.update(self.schedule.total, self.sim_seconds())
            self._publish()

    def _hold(self) -> bool:
        """Must QEMU stay stopped after this report? (a request to serve, the marker)."""
        if self.controller is not None and self.controller.pending():
            return True
        if self.spec.until_marker is not None and not self._marker_pending:
            self._marker_pending = self._console_shows(self.spec.until_marker)
        return self._marker_pending

    def _on_report(self, report: Report) -> bool:
        """Between reports, QEMU stopped: progress, status, control requests, the marker."""
        self._on_progress(report)
        if self.controller is not None and self.controller.poll():
            self._stop = True
        if self.spec.until_marker is not None and (
                self._marker_pending or self._console_shows(self.spec.until_marker)):
            self.marker_seen = self._stop = True
        return self._stop

    def _console_shows(self, marker: str) -> bool:
        """Has the guest printed ``marker`` at the start of a line yet?

        The serial device writes the console file from the vCPU thread as
        the guest stores to it, so at a report boundary the file holds
        exactly what the guest printed so far: stopping at the first report
        that shows the marker is reproducible.
        """
        needle = b"\n" + marker.encode()
        start = max(0, self._console_pos - len(needle))
        try:
            with open(self.bridge.console_path, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return False
        self._console_pos = start + len(data)
        return needle in (b"\n" + data if start == 0 else data)

    # -- snapshots -----------------------------------------------------------

    def save(self, name: str, force: bool = False) -> snap.Snapshot:
        """Save at the current report boundary and continue (the VM pauses briefly)."""
        store = self.spec.store
        tmp = store.begin(name, force)
        try:
            plugin_state = self.bridge.pause()
            disks = self.bridge.save_machine(tmp)
            (tmp / snap.PLUGIN_STATE).write_bytes(msgpack.packb(plugin_state))
            (tmp / snap.RUN_STATE).write_bytes(msgpack.packb(
                {"schedule": self.schedule.state(), "digest": self.bridge.digest.state()}))
            if self.model is not None:
                engine = (self.engine.state() if self.engine is not None else
                          self._resume_engine or {})
                if self.model.chmu is not None:
                    engine = dict(engine, chmu=self.model.chmu.state())
                (tmp / snap.TIMING_STATE).write_bytes(persist.dumps(
                    self.model, dict(engine, time_base=self.time_base),
                    timing_config.show(self.model.cfg, "timing configuration of the snapshot"),
                    self.model.cfg.digest()))
            saved = store.commit(tmp, name, self._manifest(disks), force)
        except BaseException as e:
            store.abort(tmp)
            # a full disk, say: one line, and nothing of the save is left behind
            if isinstance(e, OSError):
                raise CosimError(f"snapshot {name} not saved: {e.strerror} "
                                 f"({e.filename or store.root})") from None
            if isinstance(e, CosimError):
                raise CosimError(f"snapshot {name} not saved: {e}") from None
            raise
        finally:
            if not self.bridge.exited:
                self.bridge.resume()
        self.saved.append(saved)
        return saved

    def _manifest(self, disks: list[dict]) -> dict:
        spec = self.spec
        binary = qemu_binary(self.bridge.arch)
        timing = None
        if self.model is not None:
            timing = {"config_digest": self.model.cfg.digest(), "preset": spec.preset,
                      "config_file": str(spec.config_file) if spec.config_file else None}
        return {
            "cosim_version": __version__,
            "created": snap.now_iso(),
            "qemu": {"binary": str(binary), "build_id": snap.build_id(binary),
                     "patch_hash": paths.patch_hash(), "version": paths.QEMU_DEBIAN_VERSION},
            "guest": {"arch": self.bridge.arch, "kernel": str(self.config.kernel),
                      "kernel_blake2b": snap.file_digest(self.config.kernel),
                      **self._linux_guest_record()},
            "machine": {"smp": self.config.smp, "memory": self.config.memory,
                        "seed": self.config.seed},
            "command_line": self.bridge.command_line(),
            "quantum": self.config.quantum,
            "icount_shift": self.config.icount_shift,
            "mode": self.config.mode,
            "timing": timing,
            "insns": list(self.schedule.insns),
            "total_insns": self.schedule.total,
            "cycles": self.cycles(),
            "digest": self.bridge.digest.hexdigest(),
            "disks": disks,
            "restored_from": spec.snapshot.name if spec.snapshot else None,
        }

    def _restore(self, s: snap.Snapshot) -> None:
        """After ``bridge.start()`` with -loadext: plugin, schedule, digest, timing."""
        assert s.plugin is not None and s.run is not None, "restore of an unverified snapshot"
        self.bridge.load_plugin_state(s.plugin)
        self.schedule.load(s.run["schedule"])
        self.bridge.digest.load(s.run["digest"])
        if self.config.quantum != s.manifest["quantum"]:
            self.notes.append(f"quantum {self.config.quantum} (the snapshot ran with "
                              f"{s.manifest['quantum']})")
        if self.spec.timing is None:
            return
        if s.timing is None:
            if self.spec.warmup == 0:
                self.notes.append("the snapshot has no timing state: caches start cold "
                                  "(add --warmup N to warm them first)")
            return
        doc = s.timing
        self.model = self._build_model()
        try:
            cold = persist.restore(self.model, doc)
        except ValueError as e:
            raise CosimError(f"snapshot {s.name}: {e}") from None
        self._resume_engine = doc["engine"]
        self.time_base = int(doc["engine"].get("time_base", 0))
        if doc["config_digest"] != self.model.cfg.digest():
            self.notes.append(f"timing configuration {self.model.cfg.digest()} differs from the "
                              f"snapshot's {doc['config_digest']}")
        chmu_cold = [n for n in cold if n == "H.Mm.chmu"]
        cold = [n for n in cold if n not in chmu_cold]
        if self.model.chmu is not None:
            if chmu_cold or "chmu" not in doc["engine"] or \
                    self.model.chmu.C.s[chmu.S_LAYOUT] != chmu.ARENA_LAYOUT:
                self.notes.append("the CHMU starts with empty counters (the snapshot's CHMU "
                                  "configuration differs, or it had none)")
                chmu_monitor.clear(self.model.chmu.C)
            else:
                self.model.chmu.load(doc["engine"]["chmu"])
        if cold:
            self.notes.append("started cold (shape or geometry changed): " + ", ".join(cold))

    # -- what the control plane and the summary read ---------------------------

    def cycles(self) -> int | None:
        if self.model is None:
            return None
        ticks = int(self.model.K.scal[:, core.T_TIME].max()) - self.time_base
        return ticks // TICKS_PER_CYCLE

    def sim_seconds(self) -> float | None:
        c = self.cycles()
        return None if c is None or self.model is None else c / (self.model.cfg.core.frequency_ghz * 1e9)

    def _publish(self) -> None:
        """A copy of the status the control plane serves from another thread."""
        wall = time.monotonic() - self._started
        done = self.schedule.total - self._start_insns
        status = {
            "state": self.state, "kernel": str(self.config.kernel), "vcpus": self.config.smp,
            "quantum": self.config.quantum, "mode": self.config.mode,
            "insns": list(self.schedule.insns), "total_insns": self.schedule.total,
            "max_insns": (self._start_insns + self.spec.max_insns) if self.spec.max_insns else 0,
            "wall_seconds": wall, "mips": done / wall / 1e6 if wall > 0 else 0.0,
            "cycles": self.cycles() or 0, "timing": self.spec.timing is not None,
            "snapshot": self.spec.snapshot.name if self.spec.snapshot else "",
            "stopped_by": self.stopped_by,
        }
        with self._lock:
            self._status = status

    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def timing_document(self) -> dict | None:
        if self.model is None:
            return None
        cycles = self.cycles() or 0
        engine = self.engine
        doc = timing_stats.document(self.model, cycles, self.spec.preset,
                                    str(self.spec.config_file) if self.spec.config_file else None,
                                    time_base=self.time_base,
                                    parked=engine.parked if engine is not None else None)
        if self.model.chmu is not None:
            doc["chmu"] = self.model.chmu.document()
        if engine is not None and engine.timeline is not None:
            doc["timeline"] = engine.timeline.document()
        if engine is not None:
            doc["order"] = self.order
            doc["max_time_skew_cycles"] = engine.max_time_skew // TICKS_PER_CYCLE
            doc["clock"] = timing_stats.clock_report(engine, self.time_base)
        return doc

    def _linux_guest_record(self) -> dict:
        """A Linux board's description and image packages, as a snapshot manifest keeps them."""
        board = self.config.board
        if not isinstance(board, LinuxBoard):
            return {}
        return {"board": dict(board.describe(), initrd_blake2b=snap.file_digest(board.initrd)),
                "packages": _image_packages(board.initrd)}

    def summary(self) -> dict:
        wall = time.monotonic() - self._started
        done = self.schedule.total - self._start_insns
        s = {
            "kernel": str(self.config.kernel), "smp": self.config.smp,
            "quantum": self.config.quantum, "mode": self.config.mode,
            **self.schedule.as_dict(),
            "digest": self.bridge.digest.hexdigest(),
            "stopped_by": self.stopped_by,
            "guest_exit_code": self.bridge.exit_code,
            "guest_results": RESULT_LINE.findall(self.bridge.console_text()),
            "wall_seconds": round(wall, 3),
            "mips": round(done / wall / 1e6, 2) if wall > 0 else 0.0,
            "session_insns": done,
        }
        if self.config.board is not None:
            s["workload_exit_code"] = self.config.board.exit_code(self.bridge.console_text())
        if self.spec.snapshot is not None:
            s["restored_from"] = self.spec.snapshot.name
        if self.notes:
            s["notes"] = self.notes
        if self.saved:
            s["saved"] = [{"name": x.name, "path": str(x.path)} for x in self.saved]
        doc = self.timing_document()
        if doc is not None:
            s = {"cycles": doc["cycles"], "cores": doc["cores"], **s, "timing": doc}
        return s
