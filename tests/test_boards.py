"""The machines as boards: what each tells the bridge and the timing model, and import direction."""

from __future__ import annotations

import ast
from pathlib import Path

from cosim.boards import DEFAULT_MEMORY, MemoryMap, VirtBoard
from cosim.libqflex_bridge import QemuConfig
from cosim.linux_machine import LinuxBoard

from conftest import guest

COSIM = Path(__file__).resolve().parents[1] / "cosim"
G = 1 << 30


def test_virt_board_is_the_default_machine():
    elf = guest("stream")
    config = QemuConfig(kernel=elf)
    assert config.machine == VirtBoard(elf, DEFAULT_MEMORY) and config.arch == "riscv64"
    board = config.machine
    assert board.qemu_args(4, Path("/unused")) == ["-M", "virt", "-bios", "none", "-m", "512M",
                                                   "-kernel", str(elf)]
    assert board.command_bytes() is None and board.ready_marker is None
    assert board.memory_map(lambda: "") == MemoryMap(ram=[(0x8000_0000, 512 << 20)], cxl=[])
    begin, end = board.roi()             # the stream guest's ROI marker variables
    assert begin >= 0x8000_0000 and end >= 0x8000_0000 and begin != end


def test_q35_board_serves_node_1_and_the_cxl_window_from_cxl():
    board = LinuxBoard(kernel=Path("/k"), initrd=Path("/i"), firmware=Path("/fw"),
                       cxl_bytes=256 << 20)
    assert QemuConfig(kernel=Path("/k"), board=board).arch == "x86_64"
    mtree = "  0000000290000000-000000038fffffff (prio 0, i/o): cxl-fixed-memory-region\n"
    assert board.memory_map(lambda: mtree) == MemoryMap(
        ram=[(0, G), (G, G), (0x2_9000_0000, 256 << 20)],
        cxl=[(G, G), (0x2_9000_0000, 256 << 20)], type3=(0x2_9000_0000, 256 << 20))
    asked = []
    plain = LinuxBoard(kernel=Path("/k"), initrd=Path("/i"), firmware=Path("/fw"))
    assert plain.memory_map(lambda: asked.append(1) or "") == MemoryMap(ram=[(0, G), (G, G)],
                                                                         cxl=[(G, G)])
    assert not asked                     # no CXL device: QEMU's memory tree is not read
    assert plain.roi() == (-1, -1)


def _cosim_imports(module: str) -> set[str]:
    """The cosim modules ``module`` imports (relative imports, resolved to top-level names)."""
    tree = ast.parse((COSIM / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add((node.module or "").split(".")[0] or node.names[0].name)
    return found


def test_imports_go_down_the_data_path():
    """The boards and the bridge know nothing of images, flows, sessions or the timing model."""
    above = {"guest_image", "linux_flow", "session", "cli", "timing", "control", "snapshot"}
    assert not _cosim_imports("boards") & (above | {"linux_machine", "libqflex_bridge"})
    assert not _cosim_imports("linux_machine") & (above | {"libqflex_bridge"})
    assert not _cosim_imports("libqflex_bridge") & (above | {"linux_machine"})
