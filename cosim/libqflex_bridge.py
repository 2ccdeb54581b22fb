"""The bridge between cosim and the patched QEMU: launch, step, observe, stop.

QEMU runs with the determinism rules of docs/design.md (quantum turns, fixed
icount, no host clock, no network) and loads the cosim plugin, which blocks
on this bridge at turn ends. The bridge owns everything the guest talks to:
the plugin socket, the trace buffer, the QMP socket and the console file,
all in a private run directory, so a run leaves nothing behind and never
an orphan QEMU (QEMU gets SIGKILL through PR_SET_PDEATHSIG if this process
dies, and ``close()`` kills it if it does not quit).

Data plane: msgpack frames on a unix socket (commands and turn summaries)
plus a shared-memory file holding the current turn's trace records.
Control plane: QMP via the ``qemu.qmp`` library (pause, resume, HMP
commands, register and memory reads).
"""

from __future__ import annotations

import codecs
import ctypes
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO

import msgpack
import numpy as np
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.qmp_client import ExecuteError

from . import interrupts, paths
from .paths import qemu_opt
from .errors import CosimError
from .boards import DEFAULT_MEMORY, DEFAULT_QUANTUM, DEFAULT_SMP, Board, VirtBoard
from .trace import RECORD_DTYPE, RunDigest

_LEN = struct.Struct("<I")

#: Instructions per round trip in round-robin: whole rounds, enough to hide
#: the round-trip cost. Trace batches stay well inside the shared buffer
#: (1 Mi records; a turn makes about 1-2 records per instruction).
FAST_BATCH_INSNS = 2_000_000
TRACE_BATCH_INSNS = 100_000
_PR_SET_PDEATHSIG = 1
#: Spin this long for the plugin's answer before blocking: a turn's report
#: often comes within tens of microseconds, and waking a blocked process
#: costs about as much again on a virtual machine (the plugin spins too).
SPIN_S = 200e-6
STDERR_TAIL_LINES = 3
#: bytes of one plugin frame at most: a report is a few kB (trace records go
#: through the shared memory), so a longer length means a corrupt stream
MAX_FRAME_BYTES = 64 << 20
#: seconds a live QEMU may leave the bridge without a byte before the run
#: stops (a stopped or hung QEMU); the longest legitimate silence is one
#: command's turns, a fraction of a second to a few seconds
ANSWER_DEADLINE_S = 300.0


@dataclass
class Turn:
    """One turn, as QEMU and the plugin saw it.

    ``records`` (trace mode) are the turn's memory accesses and
    instruction-fetch lines in program order; possibly a view of the shared
    buffer, valid until the report after the next one (the plugin writes
    the next command's records into the buffer's other half): copy to keep
    longer.
    """

    vcpu: int
    budget: int
    executed: int       # instructions, from QEMU's icount accounting
    halted: bool        # ended early because the vCPU halted (WFI)
    counted: int        # instructions, from the plugin's inline counter
    icount: int         # QEMU icount of all vCPUs after the turn
    records: np.ndarray | None = None


@dataclass
class Report:
    """What one command did: per-vCPU deltas, the last turn and, in trace
    mode, every turn with its records (``turn_list``)."""

    turns: int
    insns: list[int]
    turn_counts: list[int]
    halted_turns: list[int]
    yielded_turns: list[int]    # turns ended at a spin-wait hint (x86 PAUSE)
    short_turns: int            # turns that ended early without a halt
    count_mismatches: int       # turns where the plugin counted fewer than icount
    restarted: int              # instructions counted twice: faulted or restarted, then rerun
    last: Turn | None
    exited: bool = False        # the guest ended QEMU during this command
    partial_vcpu: int = -1      # on exit: vCPU interrupted mid-turn
    partial_insns: int = 0      # ... and the instructions it ran
    turn_list: list[Turn] = field(default_factory=list)
    partial_records: np.ndarray | None = None   # on exit: the interrupted turn's trace
    # with QemuConfig.clock == "model" (else -1 / 0):
    vclock: int = -1            # the guest's virtual clock after the command, ns
    deadline: int = -1          # when the next virtual timer is due, ns; -1 none
    idle_mask: int = 0          # vCPUs halted with nothing to do, at the end
    start_idle_mask: int = 0    # ... at the last turn's start, once due timers fired
    #: trace mode, when ``turn_list``'s records lie one after another in the
    #: shared buffer (no chunk, nothing carried over): all of them, and where
    #: each turn's begin (with the end of the last), to hand on without a copy
    trace: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class QemuConfig:
    """How to launch QEMU: ``board``'s machine, by default riscv64 ``virt`` booting ``kernel``."""

    kernel: Path
    smp: int = DEFAULT_SMP
    quantum: int = DEFAULT_QUANTUM
    mode: str = "fast"
    memory: str = DEFAULT_MEMORY
    icount_shift: int = 0
    seed: int = 1
    shm_records: int = 1 << 20
    extra_args: list[str] = field(default_factory=list)
    loadext: Path | None = None     # a snapshot directory to start from (-loadext)
    board: Board | None = None      # another machine (a Linux q35: kernel is then its bzImage)
    #: "icount": the guest's clocks follow instructions (2^shift ns each);
    #: "model": the timing model sets them (step(clock=...)), see cosim.timing.engine
    clock: str = "icount"

    @property
    def machine(self) -> Board:
        """The board QEMU runs: ``board``, or riscv64 ``virt`` with ``kernel`` and ``memory``."""
        return self.board if self.board is not None else VirtBoard(self.kernel, self.memory)

    @property
    def arch(self) -> str:
        return self.machine.arch

    def rr_batch_turns(self) -> int:
        """Turns per round-robin round trip: whole rounds, about a batch of instructions."""
        per_batch = TRACE_BATCH_INSNS if self.mode == "trace" else FAST_BATCH_INSNS
        return self.smp * max(1, per_batch // (self.quantum * self.smp))


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, a debugger): state T or t in /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def qemu_binary(arch: str = "riscv64") -> Path:
    """The patched QEMU binary, or a CosimError saying how to build it."""
    qb = paths.qemu_build()
    binary = qb.binary(arch)
    if not (qb.is_built() and binary.is_file()):
        raise CosimError(
            f"patched QEMU is not built (expected {binary}); run ./setup.sh or `cosim build`"
        )
    return binary


def plugin_path() -> Path:
    lib = paths.plugin_library()
    if not lib.is_file():
        raise CosimError(f"cosim plugin is not built (expected {lib}); run `cosim build`")
    return lib


def die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the process that started it dies (QEMU
    under the bridge, a sweep point's cosim run under its Dask worker)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


#: C0 and C1 control characters but tab and newline, and DEL: a guest's
#: escape sequences must not drive the user's terminal (the console file
#: keeps them)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Guest console text as it may be shown on a terminal."""
    return _CONTROL.sub("", text)


class Bridge:
    """One QEMU process stepped by instruction quanta.

    Use as a context manager; ``start()`` returns once every vCPU is
    parked before its first instruction and the plugin waits for a command.
    """

    def __init__(self, config: QemuConfig, console: TextIO | Path | None = None) -> None:
        if config.mode not in ("fast", "trace"):
            raise CosimError(f"--mode {config.mode}: must be fast or trace")
        if config.clock not in ("icount", "model"):
            raise CosimError(f"clock {config.clock!r}: must be icount or model")
        self.config = config
        self.arch = config.arch
        self.digest = RunDigest(block_turns=config.rr_batch_turns())
        self.exit_code: int | None = None
        self.hello: dict = {}
        self.vclock = -1        # the guest's virtual clock at the last message (clock=model)
        self._console_target = console
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._shm: mmap.mmap | None = None
        self._half = 0          # the half of the trace buffer the next report's records are in
        self._dir = Path(tempfile.mkdtemp(prefix="cosim-run-"))
        self._console_thread: threading.Thread | None = None
        self._console_stop = threading.Event()
        self._exited = False
        self._in_flight = False              # send_step() without finish() yet
        self._closed = False
        self._emergency: int | None = None  # token of _kill_now with cosim.interrupts
        self._carry: list[np.ndarray] = []   # records of a turn split by chunks
        # (records, bounds) of the last message's turns, whole (see Report.trace)
        self._whole: tuple[np.ndarray, np.ndarray] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def console_path(self) -> Path:
        if isinstance(self._console_target, Path):
            return self._console_target
        return self._dir / "console.log"

    @property
    def command_file(self) -> Path:
        """The board's command channel, for a machine that has one (Linux: fw_cfg)."""
        return self._dir / "command"

    @property
    def stderr_path(self) -> Path:
        return self._dir / "qemu.stderr"

    def command_line(self) -> list[str]:
        """The full QEMU command line (also recorded by snapshots)."""
        c = self.config
        plugin_args = [f"socket={qemu_opt(self._dir / 'plugin.sock')}", f"mode={c.mode}"]
        if c.mode == "trace":
            plugin_args += [f"shm={qemu_opt(self._dir / 'trace.shm')}",
                            f"shm_records={c.shm_records}"]
        if c.clock == "model":
            plugin_args.append("clock=model")
        return [
            str(qemu_binary(self.arch)), *c.machine.qemu_args(c.smp, self.command_file),
            "-display", "none", "-nodefaults", "-smp", str(c.smp),
            "-accel", f"tcg,thread=single,quantum={c.quantum}",
            "-icount", f"shift={c.icount_shift},sleep=off,align=off",
            "-rtc", "clock=vm,base=2025-01-01T00:00:00",
            "-seed", str(c.seed),
            "-chardev", f"file,id=con0,path={qemu_opt(self.console_path)}",
            "-serial", "chardev:con0",
            "-qmp", f"unix:{qemu_opt(self._dir / 'qmp.sock')},server=on,wait=off",
            "-plugin", qemu_opt(plugin_path()) + "," + ",".join(plugin_args),
            *(["-loadext", str(c.loadext)] if c.loadext is not None else []),
            *c.extra_args,
        ]

    def start(self) -> "Bridge":
        cmd = self.command_line()
        command = self.config.machine.command_bytes()
        if command is not None:
            self.command_file.write_bytes(command)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self._dir / "plugin.sock"))
        self._listener.listen(1)
        if self.config.mode == "trace":
            # two halves, alternating by report (see plugin/cosim.c)
            size = 2 * self.config.shm_records * RECORD_DTYPE.itemsize
            shm_file = self._dir / "trace.shm"
            with open(shm_file, "wb") as f:
                f.truncate(size)
            with open(shm_file, "r+b") as f:
                self._shm = mmap.mmap(f.fileno(), size)
        with open(self.stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, preexec_fn=die_with_parent, start_new_session=True,
            )
        self._emergency = interrupts.register(self._kill_now)
        try:
            self._sock = self._accept_plugin()
            self.hello = self._recv()
            if self.hello.get("t") != "hello":
                raise CosimError(f"plugin sent {self.hello!r} instead of hello")
            self._start_console_forwarding()
            self.vclock = self._expect("ready").get("vclock", -1)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> "Bridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop QEMU (politely, then by force) and remove the run directory."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None and _stopped(proc.pid):
            proc.kill()         # a stopped QEMU answers neither the plugin nor QMP
            proc.wait()
        if proc is not None and proc.poll() is None:
            try:
                if self._sock is not None and not self._exited:
                    self._send({"c": "detach"})
            except (OSError, CosimError):
                pass
            # SIGTERM, not QMP's quit: connecting a QMP client has no timeout,
            # and QEMU shuts down on either the same way
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stop_console_forwarding()
        for closable in (self._qmp, self._sock, self._listener, self._shm):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    pass
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._emergency is not None:
            interrupts.unregister(self._emergency)

    def _kill_now(self) -> None:
        """The watchdog's cleanup (cosim.interrupts): QEMU killed, run directory removed."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def exited(self) -> bool:
        """The guest has ended QEMU; nothing more can run."""
        return self._exited

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- data plane --------------------------------------------------------

    def rr(self, turns: int) -> Report:
        """Run ``turns`` turns round-robin with the quantum (1 in trace mode)."""
        if turns <= 0:
            raise CosimError(f"turns={turns}: must be > 0")
        return self._command({"c": "rr", "turns": turns})

    def step(self, vcpu: int, n: int, turns: int = 1, parked: int = 0,
             clock: int | None = None, rate: int = 0, cap: int = -1) -> Report:
        """Run vCPU ``vcpu`` for ``n`` instructions (others skip their turns).

        ``turns`` > 1: turns of ``n`` in a row until the vCPU has run
        ``turns * n`` instructions (turns ended early at a spin-wait hint
        do not use up a turn's worth), ending early when the vCPU halts or
        a vCPU in the ``parked`` mask has work again.
        ``clock`` (clock=model): set the guest's virtual clock to ``clock``
        ns as the turn starts, advancing ``rate`` ns per instruction (16.16
        fixed point) up to ``cap`` ns (-1: none).
        """
        self.send_step(vcpu, n, turns, parked, clock, rate, cap)
        return self.finish()

    def send_step(self, vcpu: int, n: int, turns: int = 1, parked: int = 0,
                  clock: int | None = None, rate: int = 0, cap: int = -1) -> None:
        """The first half of ``step``: QEMU starts running while the caller works.

        ``finish`` collects the report. Until then nothing else may be sent,
        and the records of the previous report are overwritten: copy them
        first.
        """
        if not 0 <= vcpu < self.config.smp:
            raise CosimError(f"vcpu={vcpu}: must be in 0..{self.config.smp - 1}")
        if n <= 0 or turns <= 0:
            raise CosimError(f"n={n}, turns={turns}: must be > 0")
        cmd: dict = {"c": "step", "vcpu": vcpu, "n": n}
        if turns > 1:
            cmd["turns"] = turns
        if parked:
            cmd["parked"] = parked
        if clock is not None:
            if self.config.clock != "model":
                raise CosimError("step(clock=...) needs QemuConfig.clock='model'")
            cmd.update(clock=clock, rate=rate, cap=cap)
        self._start(cmd)

    def send_round(self, n: list[int], turns: list[int], parked: int = 0,
                   clock: list[int] | None = None, rate: list[int] | None = None,
                   cap: list[int] | None = None) -> None:
        """Start several vCPUs' turns in one command; ``finish`` collects the report.

        vCPU ``v`` runs ``turns[v]`` turns of ``n[v]`` instructions (0: it
        skips), interleaved in QEMU's vCPU order, until each has run them,
        halted or ended a turn at a spin-wait hint; the report comes early
        when a vCPU in ``parked`` has work again. ``clock``/``rate``/``cap``
        (clock=model): per vCPU, as in ``step``; each of its turns starts
        the clock at ``clock[v]`` plus ``rate[v]`` times what it ran so far
        in the round.
        """
        smp = self.config.smp
        if len(n) != smp or len(turns) != smp:
            raise CosimError(f"round: n and turns need {smp} entries, got {len(n)} and {len(turns)}")
        if min(n) < 0 or min(turns) < 0 or not any(a > 0 and k > 0 for a, k in zip(n, turns)):
            raise CosimError(f"round: n={n}, turns={turns}: need entries >= 0 and a vCPU "
                             "with both > 0")
        cmd: dict = {"c": "round", "n": list(n), "turns": list(turns)}
        if parked:
            cmd["parked"] = parked
        if clock is not None:
            if self.config.clock != "model":
                raise CosimError("round(clock=...) needs QemuConfig.clock='model'")
            if rate is None or cap is None or len(clock) != smp or len(rate) != smp \
                    or len(cap) != smp:
                raise CosimError(f"round: clock, rate and cap need {smp} entries each")
            cmd.update(clock=list(clock), rate=list(rate), cap=list(cap))
        self._start(cmd)

    def _start(self, cmd: dict) -> None:
        if self._exited:
            raise CosimError("the guest has exited; nothing left to run")
        if self._in_flight:
            raise CosimError("a command is already running (finish() it first)")
        self._send(cmd)
        self._in_flight = True

    def finish(self) -> Report:
        """The report of the command ``send_step`` started."""
        if not self._in_flight:
            raise CosimError("no command is running")
        self._in_flight = False
        turns: list[Turn] = []
        chunked = False
        while True:
            msg = self._recv()
            kind = msg.get("t")
            try:
                if kind == "chunk":
                    # the buffer is reused after the ack: keep copies
                    turns += self._turn_ends(msg, copy=True)
                    self._send({"c": "ack"})
                    chunked = True
                    continue
                if kind in ("report", "exit"):
                    carried = bool(self._carry)
                    turns += self._turn_ends(msg, copy=False)
                    # the plugin writes the next command's records into the other
                    # half, so these stay valid until the report after next
                    self._half ^= 1
                    report = self._report(msg, turns)
                    if turns and not chunked and not carried:
                        report.trace = self._whole
                    return report
            except (KeyError, TypeError, ValueError) as e:
                self._fail(f"sent a malformed {kind} ({type(e).__name__}: {str(e)[:80]})")
            self._fail(f"sent an unexpected message {str(msg)[:80]}")

    def _command(self, cmd: dict) -> Report:
        self._start(cmd)
        return self.finish()

    def _turn_ends(self, msg: dict, copy: bool) -> list[Turn]:
        """Cut the buffer into the turns a trace-mode message completed.

        Digest order is each turn's records, then its outcome, so it does
        not depend on how turns were batched or chunked. Records after the
        last turn end belong to the running turn and carry over.
        """
        if self._shm is None:
            return []
        size = RECORD_DTYPE.itemsize
        n = msg["nrec"]
        first = self._half * self.config.shm_records * size
        view = memoryview(self._shm)[first:first + n * size]
        recs = np.frombuffer(view, dtype=RECORD_DTYPE, count=n)
        ends = msg.get("ends", ())
        bounds = np.zeros(len(ends) + 1, dtype=np.int64)
        bounds[1:] = [e[-1] for e in ends]
        self._whole = (recs[:bounds[-1]], bounds)
        turns = []
        start = 0
        for vcpu, budget, executed, halted, counted, icount, end in ends:
            self.digest.records(view[start * size:end * size])
            self.digest.turn(vcpu, budget, executed, halted)
            piece = recs[start:end]
            if self._carry:
                piece = np.concatenate([*self._carry, piece])
                self._carry = []
            elif copy:
                piece = piece.copy()
            turns.append(Turn(vcpu, budget, executed, halted, counted, icount, piece))
            start = end
        self.digest.records(view[start * size:])
        if start < n:
            self._carry.append(recs[start:].copy())
        return turns

    def _report(self, msg: dict, turns: list[Turn]) -> Report:
        exited = msg["t"] == "exit"
        last = None
        if not exited:
            last = Turn(vcpu=msg["vcpu"], budget=msg["budget"], executed=msg["executed"],
                        halted=msg["halted"], counted=msg["counted"], icount=msg["icount"])
        report = Report(
            turns=msg["turns"], insns=msg["d_insns"], turn_counts=msg["d_turns"],
            halted_turns=msg["d_halted"], yielded_turns=msg["d_yielded"],
            short_turns=msg["short"],
            count_mismatches=msg["mismatch"], restarted=msg["restarted"], last=last, exited=exited,
            partial_vcpu=msg["vcpu"] if exited else -1,
            partial_insns=msg["counted"] if exited else 0,
            turn_list=turns,
            vclock=msg.get("vclock", -1), deadline=msg.get("deadline", -1),
            idle_mask=msg.get("idle", 0), start_idle_mask=msg.get("sidle", 0),
        )
        self.vclock = report.vclock
        if self._shm is None:
            self.digest.batch(report.insns, report.turn_counts, report.halted_turns)
        elif turns and last is not None:
            last.records = turns[-1].records
        if exited:
            self._exited = True
            if self._carry:
                report.partial_records = np.concatenate(self._carry)
                self._carry = []
            self.digest.turn(report.partial_vcpu, 0, report.partial_insns, False)
            self.exit_code = self._wait_exit()
        return report

    def _wait_exit(self) -> int:
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            raise CosimError("QEMU did not exit after the guest ended the run") from None

    def _send(self, obj: dict) -> None:
        assert self._sock is not None
        data = msgpack.packb(obj)
        try:
            self._sock.sendall(_LEN.pack(len(data)) + data)
        except OSError as e:
            self._fail(f"broke the plugin connection ({e.strerror})")

    def _recv(self) -> dict:
        """One frame from the plugin: a msgpack map, or a one-line error saying what came."""
        (size,) = _LEN.unpack(self._recv_exact(_LEN.size))
        if size > MAX_FRAME_BYTES:
            self._fail(f"sent a frame of {size} bytes (at most {MAX_FRAME_BYTES}): the plugin "
                       "connection is corrupt")
        try:
            msg = msgpack.unpackb(self._recv_exact(size))
        except Exception as e:  # unpackb raises several types on arbitrary bytes
            self._fail(f"sent a malformed frame ({type(e).__name__}: {str(e)[:80]})")
        if not isinstance(msg, dict):
            self._fail(f"sent a frame that is not a map ({type(msg).__name__})")
        return msg

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        spin_until = time.perf_counter() + SPIN_S
        silent_since = time.monotonic()
        while got < n:
            try:
                if time.perf_counter() < spin_until:
                    k = self._sock.recv_into(view[got:], n - got, socket.MSG_DONTWAIT)
                else:
                    k = self._sock.recv_into(view[got:])
            except BlockingIOError:
                continue
            except socket.timeout:
                self._check_alive()
                if time.monotonic() - silent_since > ANSWER_DEADLINE_S:
                    self._fail(f"stopped answering (nothing for {ANSWER_DEADLINE_S:.0f} s: "
                               "stopped, or hung)")
                continue
            except OSError as e:
                self._fail(f"broke the plugin connection ({e.strerror})")
            if k == 0:
                self._fail("closed the plugin connection")
            got += k
            silent_since = time.monotonic()
        return bytes(buf)

    def _expect(self, kind: str) -> dict:
        msg = self._recv()
        if msg.get("t") != kind:
            raise CosimError(f"plugin sent {msg.get('t')!r}, expected {kind!r}")
        return msg

    def _accept_plugin(self) -> socket.socket:
        assert self._listener is not None
        self._listener.settimeout(0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                self._check_alive()
                continue
            conn.settimeout(0.5)
            return conn
        self._fail("did not load the cosim plugin within 30 s")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._fail(f"exited with status {self._proc.returncode}")

    def _fail(self, what: str) -> NoReturn:
        """Raise a one-line error with the tail of QEMU's stderr."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        tail = " | ".join(lines[-STDERR_TAIL_LINES:]) or "no output on stderr"
        status = self._proc.poll() if self._proc is not None else None
        if status is not None and f"status {status}" not in what:
            what += f" (exit status {status})"
        raise CosimError(f"QEMU {what}: {tail}")

    # -- control plane (QMP) -----------------------------------------------

    def _qmp_client(self, timeout: float = 10.0) -> QEMUMonitorProtocol:
        if self._qmp is None:
            qmp = QEMUMonitorProtocol(str(self._dir / "qmp.sock"))
            deadline = time.monotonic() + timeout
            while True:
                try:
                    qmp.connect()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise CosimError("cannot connect to QEMU's QMP socket") from None
                    self._check_alive()
                    time.sleep(0.05)
            self._qmp = qmp
        return self._qmp

    def qmp(self, command: str, **args: object) -> object:
        """Run a QMP command; QEMU answers while the plugin holds a turn boundary."""
        return self._qmp_client().cmd(command, **args) if args else self._qmp_client().cmd(command)

    def hmp(self, command: str, cpu: int | None = None) -> str:
        """Run a human-monitor command (optionally in the context of a vCPU)."""
        args: dict[str, object] = {"command-line": command}
        if cpu is not None:
            args["cpu-index"] = cpu
        return str(self._qmp_client().cmd("human-monitor-command", **args))

    def registers(self, vcpu: int) -> dict[str, int]:
        """Integer registers and pc of one vCPU (parsed from ``info registers``)."""
        regs: dict[str, int] = {}
        for line in self.hmp("info registers", cpu=vcpu).splitlines():
            tokens = line.split()
            for name, value in zip(tokens[::2], tokens[1::2]):
                try:
                    regs[name] = int(value, 16)
                except ValueError:
                    pass
        return regs

    def read_memory(self, addr: int, size: int) -> bytes:
        """Guest-physical memory, byte-exact (QMP ``pmemsave`` to a private file)."""
        if size <= 0:
            raise CosimError(f"size={size}: must be > 0")
        out = self._dir / "pmem.bin"
        self.qmp("pmemsave", val=addr, size=size, filename=str(out))
        data = out.read_bytes()
        out.unlink()
        return data

    def pause(self) -> dict:
        """Stop the VM at the end of the current round (call between commands).

        Returns the plugin's state (its dependence rings), which a snapshot
        must carry for the trace of a restored run to match.
        """
        if self._in_flight:
            raise CosimError("pause() while a command is running (finish() it first)")
        self._send({"c": "pause"})
        state = self._expect("paused")
        del state["t"]
        deadline = time.monotonic() + 30
        while self.qmp("query-status")["status"] != "paused":  # type: ignore[index]
            if time.monotonic() > deadline:
                raise CosimError("the VM did not pause at the round boundary within 30 s")
            self._check_alive()
            time.sleep(0.01)
        return state

    def load_plugin_state(self, state: dict) -> None:
        """Give a restored run's plugin the state ``pause()`` returned (before any command)."""
        self._send({"c": "load", "dep": state["dep"], "head": state["head"]})

    def save_machine(self, directory: Path) -> list[dict]:
        """QEMU's machine state into ``directory/machine.state`` (the VM must be paused).

        Returns the disks QEMU froze (device, frozen image, new overlay). A
        failed save (a full disk, say) is a CosimError naming the directory.
        """
        try:
            return list(self.qmp("savevm-ext", dir=str(directory)) or [])  # type: ignore[arg-type]
        except ExecuteError as e:
            raise CosimError(f"QEMU could not save the machine state ({e})") from None

    def resume(self) -> None:
        """Continue after ``pause()``; returns when the plugin asks for a command."""
        self.qmp("cont")
        self.vclock = self._expect("ready").get("vclock", -1)

    # -- console -----------------------------------------------------------

    def console_text(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def _start_console_forwarding(self) -> None:
        """Copy the guest console file to a stream as it grows."""
        sink = self._console_target
        if sink is None or isinstance(sink, Path):
            return
        self._console_thread = threading.Thread(
            target=self._forward_console, args=(sink,), daemon=True)
        self._console_thread.start()

    def _forward_console(self, sink: TextIO) -> None:
        pos = 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            stopping = self._console_stop.is_set()
            try:
                with open(self.console_path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except OSError:
                data = b""
            if data:
                pos += len(data)
                sink.write(printable(decoder.decode(data)))
                sink.flush()
            if stopping:
                return
            self._console_stop.wait(0.05)

    def _stop_console_forwarding(self) -> None:
        if self._console_thread is not None:
            self._console_stop.set()
            self._console_thread.join(timeout=2)

