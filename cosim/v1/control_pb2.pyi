from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("sim_id", "state", "kernel", "vcpus", "quantum", "mode", "insns", "total_insns", "max_insns", "mips", "wall_seconds", "timing", "cycles", "snapshot", "stopped_by")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Status.State]
        RUNNING: _ClassVar[Status.State]
        PAUSED: _ClassVar[Status.State]
        FINISHED: _ClassVar[Status.State]
        STARTING: _ClassVar[Status.State]
    STATE_UNSPECIFIED: Status.State
    RUNNING: Status.State
    PAUSED: Status.State
    FINISHED: Status.State
    STARTING: Status.State
    SIM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    QUANTUM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INSNS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INSNS_FIELD_NUMBER: _ClassVar[int]
    MAX_INSNS_FIELD_NUMBER: _ClassVar[int]
    MIPS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    sim_id: str
    state: Status.State
    kernel: str
    vcpus: int
    quantum: int
    mode: str
    insns: _containers.RepeatedScalarFieldContainer[int]
    total_insns: int
    max_insns: int
    mips: float
    wall_seconds: float
    timing: bool
    cycles: int
    snapshot: str
    stopped_by: str
    def __init__(self, sim_id: _Optional[str] = ..., state: _Optional[_Union[Status.State, str]] = ..., kernel: _Optional[str] = ..., vcpus: _Optional[int] = ..., quantum: _Optional[int] = ..., mode: _Optional[str] = ..., insns: _Optional[_Iterable[int]] = ..., total_insns: _Optional[int] = ..., max_insns: _Optional[int] = ..., mips: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., timing: _Optional[bool] = ..., cycles: _Optional[int] = ..., snapshot: _Optional[str] = ..., stopped_by: _Optional[str] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("vcpu", "n")
    VCPU_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    vcpu: int
    n: int
    def __init__(self, vcpu: _Optional[int] = ..., n: _Optional[int] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("vcpu", "budget", "executed", "halted", "icount", "records")
    VCPU_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    ICOUNT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    vcpu: int
    budget: int
    executed: int
    halted: bool
    icount: int
    records: bytes
    def __init__(self, vcpu: _Optional[int] = ..., budget: _Optional[int] = ..., executed: _Optional[int] = ..., halted: _Optional[bool] = ..., icount: _Optional[int] = ..., records: _Optional[bytes] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("turns", "status")
    TURNS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    status: Status
    def __init__(self, turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., status: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class SaveSnapshotRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("name", "path", "created", "kernel", "vcpus", "quantum", "total_insns", "cycles", "has_timing", "bytes_on_disk")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    QUANTUM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INSNS_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    HAS_TIMING_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    created: str
    kernel: str
    vcpus: int
    quantum: int
    total_insns: int
    cycles: int
    has_timing: bool
    bytes_on_disk: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., created: _Optional[str] = ..., kernel: _Optional[str] = ..., vcpus: _Optional[int] = ..., quantum: _Optional[int] = ..., total_insns: _Optional[int] = ..., cycles: _Optional[int] = ..., has_timing: _Optional[bool] = ..., bytes_on_disk: _Optional[int] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotInfo]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[SnapshotInfo, _Mapping]]] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class WatchProgressRequest(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ...) -> None: ...

class WatchChmuSamplesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChmuSamples(_message.Message):
    __slots__ = ("epoch", "end_cycles", "time_ns", "address", "types", "dropped")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    END_CYCLES_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    end_cycles: int
    time_ns: _containers.RepeatedScalarFieldContainer[int]
    address: _containers.RepeatedScalarFieldContainer[int]
    types: str
    dropped: int
    def __init__(self, epoch: _Optional[int] = ..., end_cycles: _Optional[int] = ..., time_ns: _Optional[_Iterable[int]] = ..., address: _Optional[_Iterable[int]] = ..., types: _Optional[str] = ..., dropped: _Optional[int] = ...) -> None: ...
