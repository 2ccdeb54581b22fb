"""What each file of a snapshot must hold, checked before anything is restored.

A snapshot is a directory a user can copy, edit or truncate, so the loader
trusts nothing in it by default: it accepts exactly the member names below,
and decodes the manifest and the three msgpack members against the types
here before QEMU starts. The types are msgspec Structs (msgspec: typed JSON
and MessagePack decoding, whose errors name the first bad field, such as
``$.schedule.insns[2]``); the checks the types cannot state (one entry per
vCPU, an array's bytes against its shape, cache lines against the recorded
geometry) follow in ``_check_*``. Every failure is a ``FormatError`` that
the store turns into one line naming the snapshot, the file and the field.

Beyond structure, snapshots are trusted input: ``machine.state`` is QEMU's
own format, parsed by QEMU (only its size and hash are checked here), and
the timing arrays are the kernels' raw state (the values in them, such as
ring positions and cache tags, are not range-checked). Restore only
snapshots that cosim, you or your own tools made.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import UNSET, Meta, Struct, UnsetType

from .limits import MAX_QUANTUM, MAX_SMP

MANIFEST = "manifest.json"
MACHINE_STATE = "machine.state"
PLUGIN_STATE = "plugin.msgpack"
RUN_STATE = "run.msgpack"
TIMING_STATE = "timing.msgpack"
#: the members a snapshot must have, and the one it may have
REQUIRED = (MACHINE_STATE, PLUGIN_STATE, RUN_STATE)
OPTIONAL = (TIMING_STATE,)
FORMAT = 1

#: per-vCPU load values the plugin keeps for address dependence (DEP_LOADS in plugin/cosim.c)
DEP_LOADS = 4
#: dtypes the timing model's arrays use (timing/state.py)
ARRAY_DTYPES = frozenset({"<i8", "<u8", "|i1", "|u1"})
#: bytes of a run digest block's chain value (both of trace.HASHES give 128 bits)
DIGEST_BYTES = 16

Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
I64 = Annotated[int, Meta(ge=-2**63, le=2**63 - 1)]
U64 = Annotated[int, Meta(ge=0)]          # msgpack holds at most 2^64 - 1
Hex128 = Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
Vcpus = Annotated[int, Meta(ge=1, le=MAX_SMP)]


class FormatError(ValueError):
    """A snapshot member that does not hold what it must; the message names the field."""


class _Struct(Struct, forbid_unknown_fields=True):
    """Members written by cosim alone: a field cosim never writes is an error."""


# -- manifest.json ----------------------------------------------------------

class Member(_Struct):
    bytes: Count
    blake2b: Hex128


class Qemu(Struct):
    patch_hash: str
    build_id: str
    binary: str | UnsetType = UNSET
    version: str | UnsetType = UNSET


class Board(Struct):
    kernel: str
    initrd: str
    firmware: str
    node_bytes: tuple[Count, Count]
    cxl_bytes: Count
    hmat_latency_ns: tuple[Count, Count]
    hmat_bandwidth_mbps: tuple[Count, Count]
    initrd_blake2b: Hex128 | UnsetType = UNSET
    marker_nonce: bool = False      # the guest's markers carry a launch nonce
    running_nonce: Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")] | UnsetType = UNSET


class Guest(Struct):
    kernel: str
    kernel_blake2b: Hex128
    arch: Literal["riscv64", "x86_64"] = "riscv64"
    board: Board | UnsetType = UNSET
    packages: dict[str, str] | UnsetType = UNSET


class Machine(Struct):
    smp: Vcpus
    memory: Annotated[str, Meta(pattern=r"^[0-9]{1,15}[KMGkmg]?$")]
    seed: I64


class TimingInfo(Struct):
    config_digest: str
    preset: str | None
    config_file: str | None


class Disk(Struct):
    device: str
    frozen: str
    overlay: str


class Manifest(Struct):
    """Every field cosim writes (those older snapshots may lack are optional); fields of
    newer cosims are kept, not checked."""

    format: Literal[1]
    name: str
    created: str
    files: dict[str, object]            # each a Member, checked under its name
    qemu: Qemu
    guest: Guest
    machine: Machine
    quantum: Annotated[int, Meta(ge=1, le=MAX_QUANTUM)]
    icount_shift: Annotated[int, Meta(ge=0, le=10)]
    mode: Literal["trace", "fast"]
    insns: list[Count]
    total_insns: Count
    cycles: Count | None = None
    cosim_version: str | UnsetType = UNSET
    command_line: list[str] | UnsetType = UNSET
    timing: TimingInfo | None | UnsetType = UNSET
    digest: Hex128 | UnsetType = UNSET
    disks: list[Disk] | UnsetType = UNSET
    restored_from: str | None | UnsetType = UNSET


# -- plugin.msgpack, run.msgpack ---------------------------------------------

class PluginState(_Struct):
    dep: list[tuple[U64, U64, U64, U64]]
    head: list[Annotated[int, Meta(ge=0, lt=DEP_LOADS)]]


class ScheduleState(_Struct):
    insns: list[Count]
    turns: list[Count]
    halted_turns: list[Count]
    yielded_turns: list[Count]
    short_turns: Count
    count_mismatches: Count
    restarted_insns: Count
    icount_drift: Count
    qemu_icount: Count
    max_skew: Count
    last_vcpu: Annotated[int, Meta(ge=-1, lt=MAX_SMP)]


class DigestState(_Struct):
    chain: Annotated[bytes, Meta(min_length=DIGEST_BYTES, max_length=DIGEST_BYTES)]
    turns: Count
    pending: list[U64]
    hash: str = "blake2b"


class RunState(_Struct):
    schedule: ScheduleState
    digest: DigestState


# -- timing.msgpack ----------------------------------------------------------

class Array(_Struct):
    dtype: str
    shape: Annotated[list[Count], Meta(max_length=8)]
    data: bytes


class NextRound(_Struct):
    members: list[Annotated[int, Meta(ge=0, lt=MAX_SMP)]]
    turns: list[Count]
    budget: list[Count]
    count: list[Count]
    clock: list[I64]
    rate: list[I64]
    cap: list[I64]
    parked: Count
    round_cap: I64


class Engine(Struct):
    """The order's state (``TimingRun.state``); every field may be absent in older snapshots."""

    order: str | UnsetType = UNSET
    parked: list[bool] | UnsetType = UNSET
    wake_at: list[I64] | UnsetType = UNSET
    deadline_ns: I64 | UnsetType = UNSET
    offset_ns: I64 | UnsetType = UNSET
    pred: list[tuple[Count, Annotated[int, Meta(ge=1, le=2**63 - 1)]]] | UnsetType = UNSET
    last_vclock: I64 | UnsetType = UNSET
    max_time_skew: I64 | UnsetType = UNSET
    max_lead_ns: I64 | UnsetType = UNSET
    max_lag_ns: I64 | UnsetType = UNSET
    max_batch_drift_ns: I64 | UnsetType = UNSET
    next_cmd: list[tuple[Annotated[int, Meta(ge=0, lt=MAX_SMP)], dict[str, I64]]] | UnsetType \
        = UNSET
    next_round: NextRound | UnsetType = UNSET
    time_base: I64 | UnsetType = UNSET


class TimingState(_Struct):
    format: Literal[1, 2]               # 1: cache lines as tags, states and stamps
    ncores: Vcpus
    arrays: dict[str, object]           # each an Array, checked under its name
    engine: Engine
    config_toml: str
    config_digest: str
    cache_geometry: list[tuple[Count, Count, Count]] | UnsetType = UNSET


# -- decoding ----------------------------------------------------------------

def manifest(blob: bytes) -> dict:
    """The manifest as a dict, after checking it (``FormatError`` otherwise)."""
    doc = _decode(msgspec.json.decode, blob, "JSON")
    m = _typed(doc, Manifest)
    _entries(doc, "files", Member)
    names = set(m.files)
    unknown = sorted(names - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise FormatError(f"files: unexpected member {unknown[0]!r} (a snapshot holds "
                          f"{', '.join(REQUIRED + OPTIONAL)})")
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise FormatError(f"files: member {missing[0]} is not listed")
    if len(m.insns) != m.machine.smp:
        raise FormatError(f"insns: {len(m.insns)} entries for {m.machine.smp} vCPUs")
    return doc


def plugin_state(blob: bytes, nvcpus: int) -> dict:
    doc = _decode(msgspec.msgpack.decode, blob, "msgpack")
    s = _typed(doc, PluginState)
    _per_vcpu({"dep": s.dep, "head": s.head}, nvcpus)
    return doc


def run_state(blob: bytes, nvcpus: int) -> dict:
    doc = _decode(msgspec.msgpack.decode, blob, "msgpack")
    s = _typed(doc, RunState).schedule
    _per_vcpu({f"schedule.{k}": getattr(s, k)
               for k in ("insns", "turns", "halted_turns", "yielded_turns")}, nvcpus)
    if s.last_vcpu >= nvcpus:
        raise FormatError(f"schedule.last_vcpu: {s.last_vcpu} on a machine of {nvcpus} vCPUs")
    return doc


def timing_state(blob: bytes, nvcpus: int) -> dict:
    doc = _decode(msgspec.msgpack.decode, blob, "msgpack")
    t = _typed(doc, TimingState)
    if t.ncores != nvcpus:
        raise FormatError(f"ncores: {t.ncores} for a machine of {nvcpus} vCPUs")
    arrays = _entries(doc, "arrays", Array)
    for name, a in arrays.items():
        _check_array(name, a)
    _check_lines(t, arrays)
    e = t.engine
    _per_vcpu({f"engine.{k}": getattr(e, k) for k in ("parked", "wake_at", "pred")
               if getattr(e, k) is not UNSET}, nvcpus)
    if e.next_round is not UNSET:
        r = e.next_round
        _per_vcpu({f"engine.next_round.{k}": getattr(r, k)
                   for k in ("budget", "count", "clock", "rate", "cap")}, nvcpus)
        if len(r.turns) != len(r.members) or any(u >= nvcpus for u in r.members):
            raise FormatError("engine.next_round: members and turns do not match the vCPUs")
    return doc


def _decode(decode, blob: bytes, what: str) -> object:
    try:
        return decode(blob)
    except msgspec.DecodeError as e:
        raise FormatError(f"not {what} ({e})") from None


def _typed(doc: object, kind: type, at: str = "") -> Any:
    """``doc`` converted to ``kind``; ``at`` is where ``doc`` sits in its file (msgspec names
    a field inside a dict's value only as ``[...]``, so such values are checked one by one)."""
    try:
        return msgspec.convert(doc, kind)
    except msgspec.ValidationError as e:
        text = str(e)
        if at:
            text = text.replace("`$", f"`$.{at}", 1) if " - at `$" in text \
                else f"{text} - at `$.{at}`"
        raise FormatError(text) from None


def _entries(doc: dict, field: str, kind: type) -> dict:
    """The values of the dict ``doc[field]``, each checked as ``kind`` under its own key."""
    return {k: _typed(v, kind, f"{field}[{k!r}]") for k, v in doc[field].items()}


def _per_vcpu(fields: dict[str, list], nvcpus: int) -> None:
    for name, value in fields.items():
        if len(value) != nvcpus:
            raise FormatError(f"{name}: {len(value)} entries for {nvcpus} vCPUs")


def _check_array(name: str, a: Array) -> None:
    if a.dtype not in ARRAY_DTYPES:
        raise FormatError(f"arrays.{name}.dtype: {a.dtype!r} is not one the timing model uses "
                          f"({', '.join(sorted(ARRAY_DTYPES))})")
    want = math.prod(a.shape) * np.dtype(a.dtype).itemsize
    if len(a.data) != want:
        raise FormatError(f"arrays.{name}.data: {len(a.data)} bytes, its shape "
                          f"{a.shape} of {a.dtype} needs {want}")


def _check_lines(t: TimingState, arrays: dict[str, Array]) -> None:
    """Every cache's lines lie inside the per-line arrays the geometry says were saved."""
    if t.cache_geometry is UNSET:
        return
    total = sum(sets * ways for _, sets, ways in t.cache_geometry)
    for cid, (offset, sets, ways) in enumerate(t.cache_geometry):
        if offset + sets * ways > total:
            raise FormatError(f"cache_geometry[{cid}]: lines {offset}..{offset + sets * ways} "
                              f"beyond the {total} saved")
    for field in ("H.C.key", "H.C.rank", "H.C.tags", "H.C.state", "H.C.stamp", "H.C.ready",
                  "H.C.src"):
        a = arrays.get(field)
        if a is not None and math.prod(a.shape) != total:
            raise FormatError(f"arrays.{field}: {math.prod(a.shape)} lines, the cache "
                              f"geometry has {total}")
