"""The run digest: independent of batching and of a save in between, for both hashes."""

from __future__ import annotations

import hashlib

import pytest

from cosim.errors import CosimError
from cosim.trace import RunDigest

TURNS = [(v % 3, 1000, 1000 - v, v == 5, bytes(range(16)) * (v + 1)) for v in range(8)]


def feed(d: RunDigest, turns, split: int) -> None:
    for vcpu, budget, executed, halted, recs in turns:
        view = memoryview(recs)
        for i in range(0, len(view), split):
            d.records(view[i:i + split])
        d.turn(vcpu, budget, executed, halted)


@pytest.mark.parametrize("split", [16, 48, 10_000])
def test_digest_does_not_depend_on_how_records_arrive(split: int) -> None:
    whole, pieces = RunDigest(), RunDigest()
    feed(whole, TURNS, 10_000)
    feed(pieces, TURNS, split)
    assert whole.hexdigest() == pieces.hexdigest()
    other = RunDigest()
    feed(other, TURNS[:-1] + [TURNS[-1][:3] + (not TURNS[-1][3], TURNS[-1][4])], split)
    assert other.hexdigest() != whole.hexdigest()


def test_a_saved_chain_continues_to_the_straight_runs_digest() -> None:
    straight, first = RunDigest(), RunDigest()
    feed(straight, TURNS, 32)
    feed(first, TURNS[:4], 32)
    resumed = RunDigest()
    resumed.load(first.state())
    feed(resumed, TURNS[4:], 32)
    assert first.state()["hash"] == "xxh3_128"
    assert resumed.hexdigest() == straight.hexdigest()


def test_a_chain_saved_before_xxh3_continues_with_blake2b() -> None:
    """Snapshots from before the hash had a name carry a BLAKE2b chain."""
    chain = hashlib.blake2b(bytes(16), digest_size=16).digest()
    d = RunDigest()
    d.load({"chain": chain, "turns": 0, "pending": []})
    assert d.hash_name == "blake2b"
    d.records(memoryview(b"x" * 16))
    expect = hashlib.blake2b(chain, digest_size=16)
    expect.update(b"x" * 16)
    assert d.hexdigest() == expect.hexdigest()
    with pytest.raises(CosimError, match="unknown hash 'md4'"):
        RunDigest().load({"chain": chain, "turns": 0, "pending": [], "hash": "md4"})
