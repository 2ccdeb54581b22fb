"""Unit tests of the Linux machine description and the workload command builder.

These check pure functions (no QEMU): the q35 memory map the timing model
relies on, HMAT figures derived from the timing configuration, the fw_cfg
command file and the one-line errors for bad --workload/--numa/--args.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cosim.errors import CosimError
from cosim.linux_flow import hmat_of, result_value, workload_command
from cosim.linux_machine import (CHMU_TYPE3_FILE, COMMAND_BYTES, Hmat, LinuxBoard, cxl_window_base,
                                 init_report)
from cosim.timing import config as timing_config

G = 1 << 30
WORKLOADS = ["gups", "stream", "pchase", "threads", "hotcold"]


def board(**kw) -> LinuxBoard:
    return LinuxBoard(kernel=Path("/k"), initrd=Path("/i"), firmware=Path("/fw"), **kw)


def test_nodes_follow_each_other_below_4g():
    b = board()
    assert b.node_ranges(0) == [(0, G)]
    assert b.node_ranges(1) == [(G, G)]


def test_node_above_the_q35_split_moves_to_4g():
    # 2G + 2G: q35 keeps 2 GiB below 4 GiB, the rest starts at 4 GiB
    b = board(node_bytes=(2 * G, 2 * G))
    assert b.node_ranges(0) == [(0, 2 * G)]
    assert b.node_ranges(1) == [(4 * G, 2 * G)]
    b = board(node_bytes=(1 * G, 2 * G))          # 3 GiB total: node 1 straddles the hole
    assert b.node_ranges(1) == [(G, G), (4 * G, G)]


def test_hmat_follows_the_timing_config():
    cfg = timing_config.load(None, None)
    h = hmat_of(cfg)
    assert h.latency_ns == (round(cfg.dram.latency_ns), round(cfg.cxl_latency_ns))
    assert h.latency_ns[1] > h.latency_ns[0]
    switched = hmat_of(timing_config.load("cxl-switch", None))
    assert switched.latency_ns[1] > h.latency_ns[1]


def test_qemu_args_announce_hmat_and_the_command_channel(tmp_path):
    b = board(hmat=Hmat((90, 200), (25600, 20000)))
    args = " ".join(b.qemu_args(4, tmp_path / "cmd"))
    assert "cpus=0-3" in args and "memdev=node1" in args
    assert "target=1,hierarchy=memory,data-type=access-latency,latency=200" in args
    assert f"name=opt/cosim/cmd,file={tmp_path / 'cmd'}" in args
    assert "cxl" not in args
    cxl = " ".join(board(cxl_bytes=256 << 20).qemu_args(2, tmp_path / "cmd"))
    assert "cxl=on" in cxl and "volatile-memdev=cxlmem0" in cxl and "cosim.cxl=1" in cxl
    # the type3 device's CHMU block, unless the guest was booted before it had one
    assert "chmu-memdev=chmu-type3" in cxl and str(tmp_path / CHMU_TYPE3_FILE) in cxl
    old = board(cxl_bytes=256 << 20, chmu_type3=False)
    assert "chmu-memdev" not in " ".join(old.qemu_args(2, tmp_path / "cmd"))
    assert LinuxBoard.from_description(old.describe()).chmu_type3 is False
    assert LinuxBoard.from_description(board(cxl_bytes=256 << 20).describe()).chmu_type3


def test_command_file_is_fixed_size_and_starts_with_the_nonce():
    b = board(command="/workloads/gups -n 10")
    data = b.command_bytes()
    assert re.fullmatch("[0-9a-f]{16}", b.nonce)
    assert len(data) == COMMAND_BYTES and data.startswith(f"{b.nonce}\n/workloads/gups -n 10\0".encode())
    with pytest.raises(CosimError, match="at most"):
        board(command="x" * (COMMAND_BYTES - 17)).command_bytes()


def test_the_nonce_follows_the_launch_inputs():
    """Identical launches get the same nonce (byte-identical runs); other ones another."""
    b = board(command="/workloads/gups", nonce_seed="aa")
    assert b.nonce == board(command="/workloads/gups", nonce_seed="aa").nonce
    assert b.nonce != board(command="/workloads/gups -n 1", nonce_seed="aa").nonce
    assert b.nonce != board(command="/workloads/gups", nonce_seed="bb").nonce
    # saved mid-command, the guest will print the nonce it was given: a continuation keeps it
    desc = b.describe()
    assert desc["running_nonce"] == b.nonce and "running_nonce" not in board().describe()
    again = LinuxBoard.from_description(desc, "idle", nonce_seed="cc")
    assert again.nonce == b.nonce and again.describe()["running_nonce"] == b.nonce


def test_only_markers_with_the_launch_nonce_count():
    b = board(running_nonce="00112233aabbccdd")
    assert b.ready_marker == "COSIM-READY 00112233aabbccdd"
    console = ("COSIM-EXIT 0\nworkload says COSIM-EXIT 00112233aabbccdd 1\n"
               "COSIM-EXIT 00112233aabbccdd 7\nCOSIM-EXIT ffffffffffffffff 9\n")
    assert b.exit_code(console) == 7
    assert b.exit_code("COSIM-EXIT 4\n") is None
    assert b.exit_code(f"COSIM-EXIT 00112233aabbccdd {'9' * 5000}\n") is None


def test_a_guest_booted_before_nonces_keeps_its_markers():
    """Snapshots booted before markers had a nonce: old command file, old markers."""
    desc = board().describe()
    del desc["marker_nonce"]
    old = LinuxBoard.from_description(desc, "/workloads/gups")
    assert old.nonce is None and old.ready_marker == "COSIM-READY"
    assert old.command_bytes().startswith(b"/workloads/gups\0")
    assert old.exit_code("COSIM-EXIT 3\n") == 3


def test_board_round_trips_through_its_description():
    b = board(cxl_bytes=256 << 20, hmat=Hmat((90, 198), (1, 2)))
    again = LinuxBoard.from_description(b.describe(), "idle")
    assert again == b and again.nonce == b.nonce
    assert again.nodes == [0, 1, 2] and board().nodes == [0, 1]


def test_workload_command_quotes_and_binds():
    cmd = workload_command(WORKLOADS, "gups", "-s 64M -n '100 000'", "membind=1", [0, 1])
    assert cmd == "numactl --membind=1 -- /workloads/gups -s 64M -n '100 000'"
    assert workload_command(WORKLOADS, "stream", "", None, [0, 1]) == "/workloads/stream"
    assert workload_command(WORKLOADS, "gups", "", "interleave=0,1", [0, 1]).startswith(
        "numactl --interleave=0,1 -- ")


@pytest.mark.parametrize("name,args,numa,message", [
    ("nosuch", "", None, "--workload nosuch: not in the guest image; it has gups"),
    ("gups", "", "membind=3", "--numa membind=3: node 3 does not exist; this machine has nodes 0,1"),
    ("gups", "", "bind=1", "--numa bind=1: want membind"),
    ("gups", "", "preferred=0,1", "preferred takes one node"),
    ("gups", "'unclosed", None, "--args"),
])
def test_bad_workload_input_is_one_line(name, args, numa, message):
    with pytest.raises(CosimError) as e:
        workload_command(WORKLOADS, name, args, numa, [0, 1])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_init_report_and_results():
    console = "boot noise\nCOSIM-INIT\nnode 0 cpus: 0 1\nnode 1 cpus:\nCOSIM-READY\n"
    assert init_report(console) == "node 0 cpus: 0 1\nnode 1 cpus:"
    assert result_value(["RESULT gups updates=5 checksum=0x1", "RESULT x updates=7"],
                        "updates") == 7
    assert result_value(["RESULT gups"], "updates") is None


def test_cxl_window_base_from_mtree():
    mtree = ("  0000000000000000-000000007fffffff (prio 0, ram): node0\n"
             "  0000000290000000-000000038fffffff (prio 0, i/o): cxl-fixed-memory-region\n")
    assert cxl_window_base(mtree) == 0x290000000
    with pytest.raises(CosimError, match="cxl-fixed-memory-region"):
        cxl_window_base("nothing here")
