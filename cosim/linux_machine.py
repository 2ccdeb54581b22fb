"""The x86_64 Linux machine: q35 with DRAM on node 0 and CXL memory on node 1.

Node 0 holds the vCPUs and DRAM; node 1 is CPU-less memory that the timing
model serves from its CXL controllers. QEMU announces both to Linux through
ACPI HMAT with the latency and bandwidth of the timing configuration, so the
guest kernel (6.12) ranks node 1 in a lower memory tier, as it would a real
CXL expander. With ``cxl`` the machine also carries QEMU's own CXL type-3
path (pxb-cxl host bridge, root port, volatile type-3 device, fixed memory
window) that the guest's init turns into a region and a NUMA node.

The guest takes commands through a fw_cfg file (``opt/cosim/cmd``, always
``COMMAND_BYTES`` long): a per-launch nonce on the first line, the command
after it. The guest's ``COSIM-READY`` and ``COSIM-EXIT`` lines carry the
nonce, so output of a workload that happens to print a marker (or a workload
that never reads the channel) cannot end a boot or fake an exit code. The
guest is root and could read the channel itself: the nonce is against
accidents and sloppy workloads, not a hostile guest. It is derived from what
defines the launch (the snapshot it starts from and its command), not drawn
at random: the guest's tty code looks each printed character up in tables,
at addresses that depend on its value, so a random nonce would change the
trace and the run digest from one identical run to the next.

fw_cfg content is not part of QEMU's migration stream, so a restored
machine reads the command given to *this* launch, and it is fixed before
the first instruction runs: a channel fed while the guest runs
(virtio-serial) would deliver at a host-timing dependent instruction and
break determinism.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .boards import MemoryMap, MemoryTree
from .errors import CosimError
from .paths import qemu_opt

#: Kernel command line of the guest image's kernel.
#: init_on_alloc=0: Debian's kernel zeroes every page at allocation *and*
#: again at an anonymous fault; under TCG that doubles the cost of touching
#: fresh memory (e.g. 1 G instead of 0.5 G instructions for hotcold's setup).
#: cryptomgr.notests: the crypto self-tests (ECDH key generation among them)
#: otherwise run in kernel threads long after init is ready and keep a vCPU
#: busy through the first workloads (measured: 45-70 M instructions).
#: panic=-1: a panic reboots, which -no-reboot turns into QEMU exiting.
#: memhp_default_state=online_movable: the CXL region's memory (onlined by
#: kmem) holds user pages only; kernel allocations such as page tables in
#: the MMIO-backed window corrupted the guest under TCG (a GUPS bound to the
#: region died with "non-zero pgtables_bytes" and an OOM panic), and a
#: movable-only node makes numactl --membind leave kernel allocations alone.
KERNEL_APPEND = ("console=ttyS0 nokaslr mitigations=off tsc=reliable no_timer_check panic=-1 "
                 "init_on_alloc=0 cryptomgr.notests memhp_default_state=online_movable")

COMMAND_BYTES = 4096
#: the CHMU register file: the PCI BAR's size and its backing file in the run directory
CHMU_BAR_BYTES = 1 << 20
CHMU_FILE = "chmu.ram"
#: the cxl-type3 device's own CHMU register block (its BAR 5, patch 0011): same size
CHMU_TYPE3_FILE = "chmu-type3.ram"
IDLE_COMMAND = "idle"
READY_MARKER = "COSIM-READY"
NONCE_HEX_DIGITS = 16


def marker_nonce(seed: str, command: str) -> str:
    """A launch's marker nonce, 16 hex digits, from where it starts (``seed``) and its command."""
    return hashlib.blake2b(f"{seed}\0{command}".encode(), digest_size=NONCE_HEX_DIGITS // 2,
                           person=b"cosim-nonce").hexdigest()


def exit_marker(nonce: str | None) -> re.Pattern[str]:
    """``COSIM-EXIT [nonce] rc`` at column 0; the code is bounded (the guest writes it)."""
    tag = f"{re.escape(nonce)} " if nonce is not None else ""
    return re.compile(rf"^COSIM-EXIT {tag}(-?\d{{1,9}})\s*$", re.M)


_4G = 1 << 32
#: q35 keeps all RAM below 4 GiB when there is less than this much
#: (hw/i386/pc_q35.c); otherwise 2 GiB below and the rest from 4 GiB up
Q35_LOWMEM_LIMIT = 0xB000_0000
Q35_LOWMEM = 0x8000_0000
CXL_WINDOW_SIZE = 4 << 30


@dataclass(frozen=True)
class Hmat:
    """What HMAT tells the guest about node ``n``: idle latency and bandwidth.

    ``linux_flow.hmat_of`` derives it from a timing configuration.
    """

    latency_ns: tuple[int, int]
    bandwidth_mbps: tuple[int, int]


@dataclass
class LinuxBoard:
    """The q35 machine's Board: everything that shapes it besides vCPUs, quantum and mode."""

    arch: ClassVar[str] = "x86_64"

    kernel: Path
    initrd: Path
    firmware: Path                      # directory for -L (seabios, linuxboot option ROMs)
    node_bytes: tuple[int, int] = (1 << 30, 1 << 30)
    cxl_bytes: int = 0                  # a cxl-type3 volatile device of this size (0: none)
    hmat: Hmat = Hmat((90, 198), (25600, 20000))
    command: str = IDLE_COMMAND
    #: where this launch starts, for its nonce: a snapshot's run digest, "boot" for a boot
    nonce_seed: str = "boot"
    #: the nonce of the command the guest was running when its snapshot was taken:
    #: the guest prints that one, so a continuation keeps it
    running_nonce: str | None = None
    #: False for a guest booted before its markers carried a nonce
    nonce_markers: bool = True
    #: the CHMU's register file as a small PCI device (``chmu_device``); False for a
    #: guest booted before it had one (a restore must match the booted machine)
    chmu_device: bool = True
    #: the cxl-type3 device (with ``cxl_bytes``) has its own CHMU register block,
    #: which holds its window's instance; False for a guest booted before it had one
    chmu_type3: bool = True

    @property
    def nonce(self) -> str | None:
        """This launch's marker nonce (None: a guest from before nonces)."""
        if not self.nonce_markers:
            return None
        return self.running_nonce or marker_nonce(self.nonce_seed, self.command)

    @property
    def has_type3_chmu(self) -> bool:
        """Does the machine have a cxl-type3 device with its own CHMU register block?"""
        return bool(self.cxl_bytes) and self.chmu_device and self.chmu_type3

    @property
    def memory_bytes(self) -> int:
        return sum(self.node_bytes)

    def append(self) -> str:
        return KERNEL_APPEND + (" cosim.cxl=1" if self.cxl_bytes else "")

    @property
    def ready_marker(self) -> str:
        """The console line that ends a boot: the guest polls for commands from then on."""
        return READY_MARKER if self.nonce is None else f"{READY_MARKER} {self.nonce}"

    def exit_code(self, console: str) -> int | None:
        """The exit code of the command this launch gave the guest, if it printed one."""
        codes = exit_marker(self.nonce).findall(console)
        return int(codes[-1]) if codes else None

    def command_bytes(self) -> bytes:
        """The fw_cfg file: nonce line and command, NUL-padded to a fixed size."""
        text = self.command if self.nonce is None else f"{self.nonce}\n{self.command}"
        data = text.encode()
        if len(data) >= COMMAND_BYTES:
            raise CosimError(f"guest command is {len(data)} bytes; at most {COMMAND_BYTES - 1}")
        return data + bytes(COMMAND_BYTES - len(data))

    def qemu_args(self, smp: int, command_file: Path) -> list[str]:
        """Machine, memory, NUMA/HMAT, CXL and boot arguments for qemu-system-x86_64."""
        h = self.hmat
        n0, n1 = self.node_bytes
        machine = "q35,hmat=on" + (",cxl=on" if self.cxl_bytes else "")
        args = [
            "-M", machine,
            # -hypervisor: Linux refuses to commit a CXL region "under a hypervisor"
            # (it cannot flush caches by CPUID); kept for both machines so they compare.
            # -erms,-fsrm: else the kernel clears and copies pages with byte-wise
            # rep stosb/movsb, and icount charges every byte as an instruction.
            # -monitor: TCG's MWAIT does not sleep with several vCPUs, so an idle
            # vCPU would spin in the kernel's mwait idle loop instead of halting
            "-cpu", "max,-hypervisor,-erms,-fsrm,-monitor",
            "-L", str(self.firmware), "-no-reboot",
            "-m", f"{self.memory_bytes >> 20}M",
            "-object", f"memory-backend-ram,id=node0,size={n0 >> 20}M",
            "-object", f"memory-backend-ram,id=node1,size={n1 >> 20}M",
            "-numa", f"node,nodeid=0,cpus=0-{smp - 1},memdev=node0,initiator=0",
            "-numa", "node,nodeid=1,memdev=node1,initiator=0",
        ]
        for node in (0, 1):
            args += ["-numa", f"hmat-lb,initiator=0,target={node},hierarchy=memory,"
                              f"data-type=access-latency,latency={h.latency_ns[node]}",
                     "-numa", f"hmat-lb,initiator=0,target={node},hierarchy=memory,"
                              f"data-type=access-bandwidth,bandwidth={h.bandwidth_mbps[node]}M"]
        if self.cxl_bytes:
            type3 = "cxl-type3,bus=cxl_rp0,volatile-memdev=cxlmem0,id=cxl-vmem0"
            if self.has_type3_chmu:
                # its CHMU block (BAR 5) is this file, which cosim maps too
                args += ["-object", f"memory-backend-file,id=chmu-type3,share=on,size="
                                    f"{CHMU_BAR_BYTES >> 20}M,mem-path="
                                    f"{qemu_opt(command_file.parent / CHMU_TYPE3_FILE)}"]
                type3 += ",chmu-memdev=chmu-type3"
            args += [
                "-object", f"memory-backend-ram,id=cxlmem0,share=on,size={self.cxl_bytes >> 20}M",
                "-device", "pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.1",
                "-device", "cxl-rp,port=0,bus=cxl.1,id=cxl_rp0,chassis=0,slot=2",
                "-device", type3,
                "-M", f"cxl-fmw.0.targets.0=cxl.1,cxl-fmw.0.size={CXL_WINDOW_SIZE >> 30}G",
            ]
        if self.chmu_device:
            # BAR 2 of an ivshmem-plain device is this file, which cosim maps too
            args += ["-object", f"memory-backend-file,id=chmu,share=on,size="
                                f"{CHMU_BAR_BYTES >> 20}M,mem-path="
                                f"{qemu_opt(command_file.parent / CHMU_FILE)}",
                     "-device", "ivshmem-plain,memdev=chmu,id=chmu,master=on,bus=pcie.0"]
        args += ["-kernel", str(self.kernel), "-initrd", str(self.initrd),
                 "-append", self.append(),
                 "-fw_cfg", f"name=opt/cosim/cmd,file={qemu_opt(command_file)}"]
        return args

    def describe(self) -> dict:
        """The board as a snapshot manifest records it (``from_description`` reverses it)."""
        return {"kernel": str(self.kernel), "initrd": str(self.initrd),
                "firmware": str(self.firmware), "node_bytes": list(self.node_bytes),
                "cxl_bytes": self.cxl_bytes, "hmat_latency_ns": list(self.hmat.latency_ns),
                "hmat_bandwidth_mbps": list(self.hmat.bandwidth_mbps),
                "marker_nonce": self.nonce_markers, "chmu_device": self.chmu_device, "chmu_type3": self.chmu_type3,
                # saved while the guest runs a command: it will print this nonce
                **({"running_nonce": self.nonce}
                   if self.nonce_markers and (self.running_nonce or self.command != IDLE_COMMAND)
                   else {})}

    @classmethod
    def from_description(cls, d: dict, command: str = IDLE_COMMAND,
                         nonce_seed: str = "boot") -> "LinuxBoard":
        return cls(kernel=Path(d["kernel"]), initrd=Path(d["initrd"]),
                   firmware=Path(d["firmware"]), node_bytes=tuple(d["node_bytes"]),
                   cxl_bytes=d["cxl_bytes"],
                   hmat=Hmat(tuple(d["hmat_latency_ns"]), tuple(d["hmat_bandwidth_mbps"])),
                   command=command, nonce_seed=nonce_seed,
                   running_nonce=d.get("running_nonce"),
                   nonce_markers=bool(d.get("marker_nonce")),
                   chmu_device=bool(d.get("chmu_device")),
                   chmu_type3=bool(d.get("chmu_type3")))

    @property
    def nodes(self) -> list[int]:
        """NUMA node ids the guest has: 0, 1 and, with the CXL device, 2 (its region)."""
        return [0, 1, 2] if self.cxl_bytes else [0, 1]

    def physical(self, offset: int, size: int) -> list[tuple[int, int]]:
        """Guest-physical pieces of machine RAM ``[offset, offset+size)`` (q35's 4 GiB split)."""
        total = self.memory_bytes
        low = total if total < Q35_LOWMEM_LIMIT else Q35_LOWMEM
        pieces = []
        if offset < low:
            pieces.append((offset, min(size, low - offset)))
        end = offset + size
        if end > low:
            start = max(offset, low)
            pieces.append((_4G + start - low, end - start))
        return pieces

    def node_ranges(self, node: int) -> list[tuple[int, int]]:
        """Physical ranges of NUMA node ``node``: nodes follow each other in machine RAM."""
        offset = sum(self.node_bytes[:node])
        return self.physical(offset, self.node_bytes[node])

    def memory_map(self, mtree: MemoryTree) -> MemoryMap:
        """Both nodes' RAM; node 1 and the CXL fixed memory window (placed by QEMU) are CXL."""
        ram = self.node_ranges(0) + self.node_ranges(1)
        cxl = list(self.node_ranges(1))
        if not self.cxl_bytes:
            return MemoryMap(ram=ram, cxl=cxl)
        window = (cxl_window_base(mtree()), self.cxl_bytes)
        return MemoryMap(ram=ram + [window], cxl=cxl + [window], type3=window)

    def roi(self) -> tuple[int, int]:
        """No ROI markers: a Linux workload is measured whole."""
        return -1, -1


def init_report(console: str) -> str:
    """What the guest's init printed about its memory (nodes, tiers, CXL) before it was ready."""
    start = console.rfind("COSIM-INIT")
    end = console.find(READY_MARKER, max(start, 0))
    if start < 0 or end < 0:
        return ""
    return "\n".join(line.rstrip() for line in console[start:end].splitlines()[1:])


def cxl_window_base(mtree: str) -> int:
    """Base of the CXL fixed memory window, from HMP ``info mtree -f``."""
    m = re.search(r"^\s*([0-9a-f]+)-[0-9a-f]+ \(prio [-\d]+, i/o\): cxl-fixed-memory-region",
                  mtree, re.M)
    if not m:
        raise CosimError("QEMU shows no cxl-fixed-memory-region; is the machine cxl=on?")
    return int(m.group(1), 16)
