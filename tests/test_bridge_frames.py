"""The bridge's frame reader against a fake plugin (a socketpair, no QEMU): random,
truncated, oversized and length-lying frames give one-line errors, never a hang
or another exception."""

from __future__ import annotations

import random
import shutil
import socket
import struct

import msgpack
import pytest

from conftest import guest
from cosim import libqflex_bridge
from cosim.errors import CosimError
from cosim.libqflex_bridge import Bridge, QemuConfig

LEN = struct.Struct("<I")


@pytest.fixture
def fake_plugin(monkeypatch: pytest.MonkeyPatch):
    """``connect()`` -> (bridge reading from a socketpair, the plugin's end)."""
    monkeypatch.setattr(libqflex_bridge, "ANSWER_DEADLINE_S", 1.0)
    made = []

    def connect() -> tuple[Bridge, socket.socket]:
        bridge = Bridge(QemuConfig(kernel=guest("spinlock"), mode="fast"))
        mine, theirs = socket.socketpair()
        mine.settimeout(0.2)
        bridge._sock = mine
        bridge._in_flight = True
        made.append((bridge, mine, theirs))
        return bridge, theirs
    yield connect
    for bridge, mine, theirs in made:
        mine.close()
        theirs.close()
        shutil.rmtree(bridge._dir, ignore_errors=True)


def outcome(bridge: Bridge) -> str:
    """What finish() made of the frames: 'report' or the one-line error."""
    try:
        bridge.finish()
        return "report"
    except CosimError as e:
        assert "\n" not in str(e) and len(str(e)) < 400, str(e)
        return str(e)


def test_random_and_truncated_frames(fake_plugin) -> None:
    rng = random.Random(1)
    for trial in range(300):
        bridge, plugin = fake_plugin()
        if trial % 3 == 0:       # random bytes, with a length that fits them
            body = rng.randbytes(rng.randrange(0, 64))
            data = LEN.pack(len(body)) + body
        elif trial % 3 == 1:     # a valid report map, cut short
            body = msgpack.packb({"t": "report", "turns": 1, "ends": [[0, 1, 1, 0, 1, 1, 0]]})
            data = (LEN.pack(len(body)) + body)[:rng.randrange(0, len(body) + 4)]
        else:                    # a map of the right kind with fields of random types
            junk = [None, -1, "x", b"\0", 2 ** 63, [], {"a": 1}, 1.5]
            body = msgpack.packb({"t": rng.choice(["report", "exit", "chunk", "hello"]),
                                  **{k: rng.choice(junk) for k in ("nrec", "ends", "turns",
                                                                   "d_insns", "vcpu")}})
            data = LEN.pack(len(body)) + body
        plugin.sendall(data)
        plugin.shutdown(socket.SHUT_WR)
        assert outcome(bridge) != "report"


def test_length_lying_frame_hits_the_deadline(fake_plugin) -> None:
    bridge, plugin = fake_plugin()
    plugin.sendall(LEN.pack(1000) + b"\x80" * 10)       # promises 1000, sends 10, then nothing
    assert "stopped answering" in outcome(bridge)


def test_oversized_and_non_map_frames(fake_plugin) -> None:
    bridge, plugin = fake_plugin()
    plugin.sendall(LEN.pack(libqflex_bridge.MAX_FRAME_BYTES + 1))
    error = outcome(bridge)
    assert f"frame of {libqflex_bridge.MAX_FRAME_BYTES + 1} bytes" in error and "corrupt" in error
    bridge, plugin = fake_plugin()
    body = msgpack.packb([1, 2, 3])
    plugin.sendall(LEN.pack(len(body)) + body)
    assert "not a map" in outcome(bridge)
