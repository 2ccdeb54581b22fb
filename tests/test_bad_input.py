"""Bad input: one-line errors naming the value, non-zero exit, no QEMU left."""

from __future__ import annotations

import json

import pytest

from conftest import cosim, qemu_pids


@pytest.fixture
def no_leftover_qemu():
    before = qemu_pids()
    yield
    assert qemu_pids() - before == set()


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode not in (0, None)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("cosim: error: ")
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.parametrize("value", ["0", "-5", "abc", str(1 << 63)])
def test_bad_quantum(value: str, no_leftover_qemu: None) -> None:
    one_line_error(cosim("run", "--quantum", value), f"--quantum {value}", "instructions per vCPU turn")


@pytest.mark.parametrize("value", ["0", "65"])
def test_bad_smp(value: str, no_leftover_qemu: None) -> None:
    one_line_error(cosim("run", "--smp", value), f"--smp {value}")


def test_missing_kernel(no_leftover_qemu: None) -> None:
    one_line_error(cosim("run", "--kernel", "/nonexistent/k.elf"), "/nonexistent/k.elf",
                   "no such file", "spinlock")


def test_non_elf_kernel(tmp_path, no_leftover_qemu: None) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a kernel\n")
    one_line_error(cosim("run", "--kernel", str(bogus)), str(bogus), "not an ELF")


def test_wrong_architecture_elf(no_leftover_qemu: None) -> None:
    import sys
    one_line_error(cosim("run", "--kernel", sys.executable), "EM_X86_64", "riscv64")


def test_qemu_not_built(tmp_path, no_leftover_qemu: None) -> None:
    proc = cosim("run", env={"COSIM_CACHE": str(tmp_path / "empty-cache")})
    one_line_error(proc, "patched QEMU is not built", "setup.sh")


def test_bad_mode(no_leftover_qemu: None) -> None:
    one_line_error(cosim("run", "--mode", "slow"), "slow", "fast", "trace")


def test_config_that_is_a_directory(tmp_path) -> None:
    one_line_error(cosim("config", "show", "--config", str(tmp_path)), str(tmp_path),
                   "is a directory")


def test_config_that_is_not_utf8(tmp_path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[cxl]\n# caf\xe9\ndevice_latency_ns = 200\n')
    one_line_error(cosim("config", "show", "--config", str(bad)), str(bad), "not UTF-8")


def test_closed_pipe_ends_quietly() -> None:
    """`cosim config show | head -0`: nobody reads the output; no traceback, SIGPIPE status."""
    import os
    import subprocess
    import sys
    from conftest import REPO
    read_end, write_end = os.pipe()
    os.close(read_end)              # the reader is gone before cosim writes a byte
    try:
        proc = subprocess.run([sys.executable, "-m", "cosim.cli", "config", "show"], cwd=REPO,
                              stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.returncode == 141


def test_args_without_workload(no_leftover_qemu: None) -> None:
    """The guest would idle until --max-insns: refuse before anything starts."""
    one_line_error(cosim("run", "--snapshot", "boot_done", "--args", "-s 1M"), "--args '-s 1M'",
                   "--workload")


def test_node_memory_not_whole_mib(no_leftover_qemu: None) -> None:
    one_line_error(cosim("boot", "--save", "never-made", "--node-memory", "1000K"),
                   "--node-memory 1000K", "whole MiB")


def test_tiers_on_a_riscv_snapshot(tmp_path, no_leftover_qemu: None) -> None:
    """`cosim tiers` needs a Linux boot; a bare-metal snapshot is named and refused."""
    d = ("--snapshot-dir", str(tmp_path))
    saved = cosim("run", "--kernel", "gups-ws1m-n20000", "--smp", "1", "--max-insns", "100000",
                  "--save", "bare", *d)
    assert saved.returncode == 0, saved.stderr
    one_line_error(cosim("tiers", "--snapshot", "bare", *d), "snapshot bare", "not a Linux boot",
                   "cosim boot")


def test_unwritable_plot_dir_refused_before_the_run(tmp_path, no_leftover_qemu: None) -> None:
    """Found before QEMU starts, not after the whole run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(cosim("run", "--timing", "--plot", str(blocker / "plots")),
                   f"--plot {blocker / 'plots'}", "cannot write")


def test_memory_range_beyond_int64(tmp_path) -> None:
    """TOML integers reach 2^63 - 1; a range ending past it cannot be modelled."""
    cfg = tmp_path / "far.toml"
    cfg.write_text("[[memory.ranges]]\nstart = 0x7fffffffffff0000\nsize = 0x100000\n"
                   "tier = \"cxl\"\n")
    one_line_error(cosim("config", "show", "--config", str(cfg)), "memory.ranges[0].size",
                   "2^63")


@pytest.mark.parametrize("value", ["foo", "127.0.0.1:99999", ":50051", "::1:50051"])
def test_malformed_listen_address(value: str, no_leftover_qemu: None) -> None:
    one_line_error(cosim("run", "--listen", value), f"--listen {value}", "HOST:PORT")


def test_busy_listen_port_is_one_line_and_leaves_no_socket(tmp_path, no_leftover_qemu: None) -> None:
    import socket
    runtime = tmp_path / "rt"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = cosim("run", "--listen", f"127.0.0.1:{port}", "--max-insns", "1000",
                     env={"XDG_RUNTIME_DIR": str(runtime)})
    one_line_error(proc, f"--listen 127.0.0.1:{port}", "cannot bind")
    assert list((runtime / "cosim").iterdir()) == []


def test_long_runtime_dir_shortens_the_socket_name(tmp_path, no_leftover_qemu: None) -> None:
    """A socket path over 107 bytes cannot be bound: the run's id is shortened to fit."""
    from cosim.control import UNIX_PATH_MAX
    # .../cosim is 82 bytes: "/stream-n2048-r2-PID.sock" does not fit after it, "/-PID.sock"
    # and a shortened stem do
    runtime = tmp_path / ("d" * (82 - len("/cosim") - 1 - len(str(tmp_path))))
    proc = cosim("run", "--kernel", "stream-n2048-r2", "--max-insns", "1000",
                 env={"XDG_RUNTIME_DIR": str(runtime)})
    assert proc.returncode == 0, proc.stderr
    too_long = tmp_path / ("d" * UNIX_PATH_MAX)
    one_line_error(cosim("run", "--max-insns", "1000", env={"XDG_RUNTIME_DIR": str(too_long)}),
                   "too long for a unix socket", "XDG_RUNTIME_DIR")


def test_guest_numbers_with_thousands_of_digits_are_not_parsed() -> None:
    """Python refuses int() of over 4300 digits; guest output must not reach it unbounded."""
    from cosim.linux_flow import result_value
    from cosim.linux_machine import exit_marker
    huge = "9" * 5000
    assert result_value([f"RESULT gups updates={huge}"], "updates") is None
    assert result_value([f"RESULT gups updates=4096 x={huge}"], "updates") == 4096
    assert exit_marker(None).findall(f"COSIM-EXIT {huge}\nCOSIM-EXIT 3\n") == ["3"]


def test_commas_in_paths_handed_to_qemu(tmp_path, no_leftover_qemu: None) -> None:
    """QEMU splits option values at commas; cosim doubles them (console, QMP, plugin sockets)."""
    tmp = tmp_path / "with,comma"
    tmp.mkdir()
    proc = cosim("run", "--kernel", "stream-n2048-r2", "--smp", "2", "--mode", "trace",
                 "--json", env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    assert any(r.startswith("RESULT stream") for r in json.loads(proc.stdout)["guest_results"])


def test_unwritable_snapshot_dir_refused_before_the_run(tmp_path, no_leftover_qemu: None) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = cosim("run", "--save", "s", "--snapshot-dir", str(blocker / "snaps"))
    one_line_error(proc, str(blocker / "snaps"), "cannot write there", "--snapshot-dir")
    assert "RESULT" not in proc.stdout   # refused before QEMU ran


def test_save_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_disk, no_leftover_qemu) -> None:
    proc = cosim("run", "--kernel", "stream-n2048-r2", "--max-insns", "20000", "--save", "s",
                 "--snapshot-dir", str(tiny_disk))
    one_line_error(proc, "snapshot s not saved", "No space left on device")
    assert sorted(p.name for p in tiny_disk.iterdir()) == []
