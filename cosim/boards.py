"""The machines cosim runs, one ``Board`` each: riscv64 ``virt`` here, x86_64 ``q35`` in linux_machine.

A board owns what makes its machine: the QEMU arguments, the RAM and the
CXL-served ranges the timing model needs, the guest's ROI markers, and the
contract with the guest (the command channel, the ready and exit markers).
The bridge takes a board's arguments and the timing model its ranges, so
neither knows which machine it runs; imports go down the data path only.
The machine defaults are defined here, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Protocol

from elftools.elf.elffile import ELFFile

from .errors import CosimError

DEFAULT_SMP = 4
DEFAULT_QUANTUM = 1000
DEFAULT_MEMORY = "512M"

#: a read of the machine's memory tree (HMP ``info mtree -f``) for a board
#: whose ranges are only known once QEMU runs (the CXL fixed memory window)
MemoryTree = Callable[[], str]


def parse_size(text: str, flag: str = "--memory") -> int:
    """Bytes of a QEMU-style size (``512M``, ``2G``; a bare number is MiB)."""
    m = re.fullmatch(r"(\d{1,15})([KMG]?)", text.strip().upper())
    if not m or int(m.group(1)) == 0:
        raise CosimError(f"{flag} {text!r}: want a size such as 512M or 2G")
    scale = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
    return int(m.group(1)) * scale


def roi_addresses(elf: Path) -> tuple[int, int]:
    """Addresses of the guest's ROI marker symbols (-1 when it has none)."""
    with open(elf, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        found = {}
        if symtab is not None:
            for name in ("cosim_roi_begin", "cosim_roi_end"):
                syms = symtab.get_symbol_by_name(name)
                if syms:
                    found[name] = syms[0]["st_value"]
    return found.get("cosim_roi_begin", -1), found.get("cosim_roi_end", -1)


@dataclass(frozen=True)
class MemoryMap:
    """Guest-physical ranges (start, size): all RAM, and the part CXL controllers serve."""

    ram: list[tuple[int, int]]
    cxl: list[tuple[int, int]] = field(default_factory=list)
    #: the cxl-type3 device's window, if the board has one (it has its own CHMU block)
    type3: tuple[int, int] | None = None


class Board(Protocol):
    """What the bridge, the session and the timing model need to know of a machine."""

    arch: str                       # "riscv64" or "x86_64": which QEMU binary

    def qemu_args(self, smp: int, command_file: Path) -> list[str]:
        """Machine, memory and boot arguments (the bridge adds vCPUs, accel, plugin)."""
        ...

    def command_bytes(self) -> bytes | None:
        """This launch's command-channel file, or None for a machine without one."""
        ...

    def memory_map(self, mtree: MemoryTree) -> MemoryMap:
        """The RAM the timing model serves, and which of it is CXL memory."""
        ...

    def roi(self) -> tuple[int, int]:
        """Store addresses that begin and end the region of interest ((-1, -1): none)."""
        ...

    @property
    def ready_marker(self) -> str | None:
        """The console line after which the guest takes commands (None: no such line)."""
        ...

    def exit_code(self, console: str) -> int | None:
        """The exit code the guest printed for this launch's command, if any."""
        ...


@dataclass(frozen=True)
class VirtBoard:
    """QEMU riscv64 ``virt`` with a bare-metal ELF: no firmware, RAM from 0x8000_0000.

    Its guests end through the test device (QEMU's exit status), print no
    markers and read no commands.
    """

    kernel: Path
    memory: str = DEFAULT_MEMORY

    arch: ClassVar[str] = "riscv64"
    ready_marker: ClassVar[str | None] = None
    #: where RAM starts (QEMU hw/riscv/virt.c)
    RAM_BASE: ClassVar[int] = 0x8000_0000

    def qemu_args(self, smp: int, command_file: Path) -> list[str]:
        return ["-M", "virt", "-bios", "none", "-m", self.memory, "-kernel", str(self.kernel)]

    def command_bytes(self) -> bytes | None:
        return None

    def memory_map(self, mtree: MemoryTree) -> MemoryMap:
        return MemoryMap(ram=[(self.RAM_BASE, parse_size(self.memory))])

    def roi(self) -> tuple[int, int]:
        return roi_addresses(self.kernel)

    def exit_code(self, console: str) -> int | None:
        return None
