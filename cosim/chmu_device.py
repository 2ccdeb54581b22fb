"""The guest-visible CHMU: register blocks with the CXL CHMU layout, in the guest's devices.

The Linux board has an ``ivshmem-plain`` PCI device whose BAR 2 is a
1 MiB file-backed RAM region (``linux_machine.CHMU_FILE`` in QEMU's run directory);
cosim maps the same file. With a cxl-type3 device, the device has its own
block of the same layout (QEMU patch 11: its BAR 5, listed in its Register
Locator DVSEC as block 5, ``CHMU_TYPE3_FILE``), which holds its window's
instance; the PCI device's holds the others. The registers follow the CXL 3.2 CHMU register
interface as Linux's proposed ``cxl_hmu`` driver reads it: a common
capability (version, instances, instance length), then per instance
capability, configuration and status registers, a range bitmap and the
hot-list ring with its head (the guest's) and tail (the device's). Offsets
beyond the spec's are marked ``X_`` (cosim's: the epochs closed, the
device's host-physical base and size, entries dropped on overflow, the unit
of the hot list last published).

The guest may choose the unit among those CAP2 lists (the configured one
and every larger power of two to 256 MiB): written to CFG2, it is counted
from the next epoch, with every counter restarted. X_UNIT tells which unit
a published list's entries count in, as the list of the epoch in which the
guest changed CFG2 still counts in the old one.

Determinism: the host writes the file only between commands, when every
vCPU is stopped, and a hot list is published with the first command
decided after the epoch closed (``Monitor.outbox``): whether QEMU already
runs a continuation decided earlier changes nothing. The guest's
configuration writes are read at the same points and take effect at the
next epoch. The file is guest RAM, so snapshots carry the registers.

Hot-list entries are 64-bit: the unit's index within the device (its
offset / unit size) above the counter width, the count (saturated) below.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from .errors import CosimError
from .linux_machine import CHMU_BAR_BYTES as BLOCK_BYTES
from .timing.chmu_monitor import Monitor, guest_units

VERSION = 1

COMMON_CAP1, COMMON_CAP2 = 0x00, 0x08
INSTANCE_BASE = 0x10
# per instance, from its base
CAP1, CAP2, CAP3, CAP4 = 0x00, 0x08, 0x10, 0x18
CFG1, CFG2, CFG3 = 0x40, 0x48, 0x50
STAT, HEAD_TAIL = 0x60, 0x68
X_EPOCH, X_BASE, X_SIZE, X_DROPPED, X_UNIT = 0x70, 0x78, 0x80, 0x88, 0x90
BITMAP = 0x100                  # one bit per 256 MiB of the device, 16 words: 256 GiB
HOTLIST = 0x180
RING_MAX = 4096                 # entries; the instance length must fit 16 bits

# CAP1 tracked request types / CFG1 tracked request types
REQ_RD, REQ_WR, REQ_ALL = 1 << 3, 1 << 4, 1 << 5
# CFG1 control bits (bits 31:16)
CTRL_ENABLE = 1
# CAP2 flags (bits 63:48)
FLAG_EPOCH, FLAG_ALWAYS_ON = 1, 2
# STAT status bits (15:0) and overflow bits (47:40)
STATUS_ENABLED = 1
OVERFLOW_HOTLIST = 1
# epoch length encoding (CAP1 max/min, CFG2): bits 3:0 scale, 15:4 multiplier
SCALES_US = {1: 100, 2: 1000, 3: 10_000, 4: 100_000, 5: 1_000_000}
_ACCESS_REQ = {"r": REQ_RD, "w": REQ_WR, "rw": REQ_ALL}


def encode_epoch(us: float) -> int:
    """The 16-bit epoch length closest to ``us`` (the largest scale that divides it)."""
    for scale in sorted(SCALES_US, reverse=True):
        mult = us / SCALES_US[scale]
        if mult == int(mult) and 1 <= mult < 4096:
            return int(mult) << 4 | scale
    return max(1, min(4095, round(us / 100))) << 4 | 1


def decode_epoch(field: int) -> float | None:
    """Microseconds of a 16-bit epoch length, or None when it is malformed."""
    scale, mult = field & 0xF, field >> 4
    if scale not in SCALES_US or mult == 0:
        return None
    return float(mult * SCALES_US[scale])


class _Block:
    """One register block: a common capability and the instances it holds, in a mapped file."""

    def __init__(self, path: Path, instances: list[int], ring: int) -> None:
        try:
            with open(path, "r+b") as f:
                self.mem = mmap.mmap(f.fileno(), BLOCK_BYTES)
        except (OSError, ValueError) as e:
            raise CosimError(f"CHMU device: cannot map {path}: {e}") from None
        # the registers as 64-bit words: reading a few per command costs ~0.2 us
        self.words = np.frombuffer(self.mem, dtype="<u8")
        self.instances = instances
        self.instance_len = HOTLIST + 8 * ring
        if INSTANCE_BASE + self.instance_len * len(instances) > BLOCK_BYTES:
            raise CosimError(f"CHMU device: {len(instances)} instances do not fit "
                             f"{BLOCK_BYTES >> 10} KiB")

    def q(self, off: int) -> int:
        return struct.unpack_from("<Q", self.mem, off)[0]

    def set(self, off: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, off, value & (1 << 64) - 1)

    def base(self, local: int) -> int:
        return INSTANCE_BASE + local * self.instance_len


class Device:
    """The register blocks of every CHMU instance, as the host sees them.

    ``blocks`` pairs each register file with the monitor's instances it
    holds (the PCI device's: the CPU-less CXL node; the cxl-type3 device's:
    its window). The instances share one configuration, as the model has
    one epoch clock and one set of counters: what the guest writes to any
    instance's CFG1/CFG2 (the first that differs from the configuration in
    force, in instance order) applies to all, and the others' registers are
    set to it at the same point.
    """

    def __init__(self, blocks: list[tuple[Path, list[int]]], monitor: Monitor) -> None:
        self.monitor = monitor
        c = monitor.cfg
        self.ring = min(RING_MAX, max(c.hot_list, 1) * 2)
        self.blocks = [_Block(path, inst, self.ring) for path, inst in blocks]
        #: (block, local index) of every monitor instance
        self.where = {i: (b, k) for b in self.blocks for k, i in enumerate(b.instances)}
        if sorted(self.where) != list(range(len(monitor.ranges))):
            raise CosimError(f"CHMU device: the register blocks hold instances "
                             f"{sorted(self.where)}, the monitor has {len(monitor.ranges)}")
        for b in self.blocks:
            self._capabilities(b)
        #: word indices of CFG1 of every instance, in instance order
        self._cfg_words = [(b, (b.base(k) + CFG1) // 8)
                           for b, k in (self.where[i] for i in range(len(monitor.ranges)))]

    def _capabilities(self, blk: _Block) -> None:
        """Write what the device is; keep the guest's configuration if the layout still fits.

        A restored guest may have configured the unit already (its registers
        are in the snapshot); a different instance count or ring size
        starts it afresh with the run's configuration.
        """
        m, c = self.monitor, self.monitor.cfg
        fresh = (blk.q(COMMON_CAP1) >> 8 & 0xFF) != len(blk.instances) \
            or (blk.q(COMMON_CAP2) & 0xFFFF) != blk.instance_len \
            or bool(blk.instances) and (blk.q(blk.base(0) + CAP1) >> 48) != self.ring
        if fresh:
            blk.mem[:] = bytes(BLOCK_BYTES)
        blk.set(COMMON_CAP1, VERSION | len(blk.instances) << 8)
        blk.set(COMMON_CAP2, blk.instance_len)
        units = sum(1 << (u.bit_length() - 1 - 8) for u in guest_units(c))
        ds_bit = c.downsample.bit_length() - 1
        flags = FLAG_EPOCH if c.mode == "epoch" else FLAG_ALWAYS_ON
        for k, i in enumerate(blk.instances):
            lo, hi = m.ranges[i]
            b = blk.base(k)
            blk.set(b + CAP1, (REQ_RD | REQ_WR | REQ_ALL) << 8
                    | encode_epoch(100_000_000) << 16 | encode_epoch(100) << 32
                    | self.ring << 48)
            blk.set(b + CAP2, units | (1 << ds_bit) << 32 | flags << 48)
            blk.set(b + CAP3, BITMAP)
            blk.set(b + CAP4, HOTLIST)
            # the device's start: hot-list units count from there (the range filter
            # may start counting further in)
            blk.set(b + X_BASE, lo - c.range_base)
            blk.set(b + X_SIZE, hi - lo + c.range_base)
            if fresh:
                blk.set(b + CFG1, _ACCESS_REQ[c.access] | CTRL_ENABLE << 16
                        | c.threshold << 32)
                blk.set(b + CFG2, c.unit_bytes | ds_bit << 32
                        | (0 if c.mode == "epoch" else 1) << 40
                        | encode_epoch(c.epoch_us) << 48)
                blk.set(b + CFG3, 0)
                for w in range(16):
                    blk.set(b + BITMAP + 8 * w, (1 << 64) - 1)
            blk.set(b + STAT, (STATUS_ENABLED if self._enabled(i) else 0)
                    | c.counter_bits << 32)

    def _enabled(self, i: int) -> bool:
        blk, k = self.where[i]
        return bool(blk.q(blk.base(k) + CFG1) >> 16 & CTRL_ENABLE)

    # -- between commands ---------------------------------------------------------

    def deliver(self) -> None:
        """Publish due hot lists and read the guest's configuration (QEMU is stopped)."""
        m = self.monitor
        if m.outbox:
            due = [rec for skip, rec in m.outbox if skip == 0]
            m.outbox = [(skip - 1, rec) for skip, rec in m.outbox if skip > 0]
            for rec in due:
                for inst in rec["instances"]:
                    self._publish(inst["instance"], rec["epoch"], inst["hot_units"],
                                  inst.get("unit_bytes", m.unit_bytes))
        m.stage(self._guest_settings())

    def _guest_settings(self) -> tuple[int, int]:
        """CFG1 and CFG2 as the guest last set them, on every instance alike.

        The configuration in force is the last one staged (in snapshots, as
        the registers are): the first instance whose words differ from it
        was written by the guest since, and every instance now shows that.
        """
        raws = [(int(blk.words[w]), int(blk.words[w + 1])) for blk, w in self._cfg_words]
        prev = self.monitor.staged[-1] if self.monitor.staged else raws[0]
        raw = next((r for r in raws if r != prev), prev)
        for (blk, w), r in zip(self._cfg_words, raws):
            if r != raw:
                blk.words[w], blk.words[w + 1] = raw
        return raw

    @staticmethod
    def settings(raw: tuple[int, int]) -> dict:
        """Enable, threshold, epoch length (us, None if malformed) and unit of CFG1 and CFG2."""
        cfg1, cfg2 = raw
        return {"enabled": bool(cfg1 >> 16 & CTRL_ENABLE), "threshold": max(1, cfg1 >> 32),
                "epoch_us": decode_epoch(cfg2 >> 48), "unit": cfg2 & 0xFFFF_FFFF}

    def _publish(self, i: int, epoch: int, units: list[list[int]], unit_bytes: int) -> None:
        """Append one epoch's hot list to instance ``i``'s ring (while enabled)."""
        blk, k = self.where[i]
        b = blk.base(k)
        blk.set(b + X_EPOCH, epoch + 1)
        blk.set(b + X_UNIT, unit_bytes)
        enabled = self._enabled(i)
        stat = blk.q(b + STAT)
        stat = (stat & ~0xFFFF) | (STATUS_ENABLED if enabled else 0)
        if not enabled:
            blk.set(b + STAT, stat)
            return
        width = self.monitor.cfg.counter_bits
        ht = blk.q(b + HEAD_TAIL)
        head, tail = ht & 0xFFFF, ht >> 16 & 0xFFFF
        dropped = 0
        for unit, count in units:
            nxt = (tail + 1) % self.ring
            if nxt == head % self.ring:
                dropped += 1
                continue
            blk.set(b + HOTLIST + 8 * tail, unit << width | min(count, (1 << width) - 1))
            tail = nxt
        if dropped:
            stat |= OVERFLOW_HOTLIST << 40
            blk.set(b + X_DROPPED, blk.q(b + X_DROPPED) + dropped)
        blk.set(b + STAT, stat)
        # the tail alone: the head's half-word is the guest's
        struct.pack_into("<H", blk.mem, b + HEAD_TAIL + 2, tail)

