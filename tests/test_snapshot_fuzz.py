"""Malformed snapshots: truncated, flipped, wrong types, re-hashed; one line each, nothing lost.

A real snapshot (riscv STREAM under --timing, so it has every member) is
damaged in many ways. Where the manifest is re-hashed the damage gets past
the BLAKE2b check and must be caught by the member checks
(cosim/snapshot_format.py). Most cases go through ``Store.load``, the code
``cosim run --snapshot`` calls before QEMU starts; a sample goes through the
command itself for the exit status and the one line.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Iterator

import msgpack
import pytest

from conftest import cosim, qemu_pids
from cosim import snapshot as snap
from cosim.errors import CosimError

MSGPACK_MEMBERS = (snap.PLUGIN_STATE, snap.RUN_STATE, snap.TIMING_STATE)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    proc = cosim("run", "--kernel", "stream", "--smp", "2", "--timing", "--max-insns", "60000",
                 "--save", "t", "--snapshot-dir", str(root))
    assert proc.returncode == 0, proc.stderr
    return root / "t"


def copy(original: Path, root: Path, name: str) -> Path:
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(original, d)
    return d


def rehash(d: Path) -> None:
    """Make the manifest agree with the (damaged) members, as a careless tool would."""
    m = json.loads((d / snap.MANIFEST).read_text())
    for member in m["files"]:
        p = d / member
        m["files"][member] = {"bytes": p.stat().st_size, "blake2b": snap.file_digest(p)}
    (d / snap.MANIFEST).write_text(json.dumps(m))


def refused(root: Path, name: str) -> str:
    """The one-line error of loading a damaged snapshot (any other exception fails)."""
    with pytest.raises(CosimError) as e:
        snap.Store(root).load(name)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"snapshot {name}: "), text
    return text


def paths_of(doc: object, at: tuple = ()) -> Iterator[tuple]:
    """Every key path of a decoded document (a list by its first element)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield at + (k,)
            yield from paths_of(v, at + (k,))
    elif isinstance(doc, list) and doc:
        yield at + (0,)
        yield from paths_of(doc[0], at + (0,))


def other_type(value: object) -> object:
    """A value of a type no field that held ``value`` accepts."""
    if isinstance(value, (bool, int, bytes)):
        return "x"
    if isinstance(value, str):
        return 7
    if isinstance(value, dict):
        return [1]
    return {"x": 1} if isinstance(value, list) else [1]


def replaced(doc: object, path: tuple, value: object) -> object:
    doc = _copy(doc)
    node = doc
    for k in path[:-1]:
        node = node[k]                               # type: ignore[index]
    node[path[-1]] = value                           # type: ignore[index]
    return doc


def _copy(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_copy(v) for v in doc]
    return doc


def named(text: str, path: tuple) -> bool:
    """Does the error name the field at ``path`` (or, for a list element, the list)?"""
    keys = [str(k) for k in path if isinstance(k, str)]
    return keys[-1] in text


@pytest.mark.parametrize("member", [snap.MANIFEST, *MSGPACK_MEMBERS])
def test_every_field_of_the_wrong_type_is_named(original: Path, tmp_path: Path,
                                                member: str) -> None:
    blob = (original / member).read_bytes()
    doc = json.loads(blob) if member == snap.MANIFEST else msgpack.unpackb(blob)
    checked = 0
    for path in paths_of(doc):
        if path[0] == "arrays" and len(path) > 1 and path[1] != "H.C.key":
            continue            # every array has the same three fields: one stands for all
        if member == snap.MANIFEST and path[0] == "files" and len(path) == 2:
            continue            # a member's entry: covered by the name checks below
        d = copy(original, tmp_path, "t")
        bad = replaced(doc, path, other_type(_get(doc, path)))
        (d / member).write_bytes(json.dumps(bad).encode() if member == snap.MANIFEST
                                 else msgpack.packb(bad))
        if member != snap.MANIFEST:
            rehash(d)
        text = refused(tmp_path, "t")
        assert member in text and named(text, path), (path, text)
        checked += 1
    assert checked > {snap.MANIFEST: 40, snap.PLUGIN_STATE: 3, snap.RUN_STATE: 15,
                      snap.TIMING_STATE: 30}[member]


def _get(doc: object, path: tuple) -> object:
    for k in path:
        doc = doc[k]                                 # type: ignore[index]
    return doc


@pytest.mark.parametrize("member", MSGPACK_MEMBERS)
def test_missing_keys_are_refused(original: Path, tmp_path: Path, member: str) -> None:
    doc = msgpack.unpackb((original / member).read_bytes())
    optional = {"cache_geometry"}           # absent in snapshots before it was recorded
    for key in doc:
        d = copy(original, tmp_path, "t")
        (d / member).write_bytes(msgpack.packb({k: v for k, v in doc.items() if k != key}))
        rehash(d)
        if key in optional:
            snap.Store(tmp_path).load("t")            # an older snapshot's shape: accepted
            continue
        assert key in refused(tmp_path, "t")


@pytest.mark.parametrize("seed", range(3))
def test_truncated_members_are_refused(original: Path, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for member in (snap.MANIFEST, *MSGPACK_MEMBERS):
        d = copy(original, tmp_path, "t")
        data = (d / member).read_bytes()
        (d / member).write_bytes(data[:rng.randrange(len(data))])
        if member != snap.MANIFEST:
            rehash(d)                                 # else the size check catches it
        assert member in refused(tmp_path, "t")


@pytest.mark.parametrize("seed", range(3))
def test_flipped_bytes(original: Path, tmp_path: Path, seed: int) -> None:
    """Without re-hashing, any flip is caught by the hash; with it, the load either
    refuses in one line or accepts a snapshot whose values changed, never anything else."""
    rng = random.Random(seed)
    for member in (snap.MACHINE_STATE, *MSGPACK_MEMBERS):
        for rehashed in (False, True):
            d = copy(original, tmp_path, "t")
            data = bytearray((d / member).read_bytes())
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            (d / member).write_bytes(bytes(data))
            if not rehashed:
                assert f"{member} is corrupt" in refused(tmp_path, "t")
                continue
            rehash(d)
            try:
                snap.Store(tmp_path).load("t")
            except CosimError as e:
                assert "\n" not in str(e) and member in str(e), str(e)


@pytest.mark.parametrize("member", ["../escape", "a/b", "extra.bin", "manifest.json"])
def test_only_known_member_names(original: Path, tmp_path: Path, member: str) -> None:
    d = copy(original, tmp_path, "t")
    m = json.loads((d / snap.MANIFEST).read_text())
    m["files"][member] = m["files"][snap.RUN_STATE]
    (d / snap.MANIFEST).write_text(json.dumps(m))
    assert f"unexpected member {member!r}" in refused(tmp_path, "t")


def test_per_vcpu_lengths_must_agree(original: Path, tmp_path: Path) -> None:
    d = copy(original, tmp_path, "t")
    run = msgpack.unpackb((d / snap.RUN_STATE).read_bytes())
    run["schedule"]["turns"].append(0)
    (d / snap.RUN_STATE).write_bytes(msgpack.packb(run))
    rehash(d)
    assert "schedule.turns: 3 entries for 2 vCPUs" in refused(tmp_path, "t")
    d = copy(original, tmp_path, "t")
    t = msgpack.unpackb((d / snap.TIMING_STATE).read_bytes())
    t["arrays"]["K.scal"]["data"] = t["arrays"]["K.scal"]["data"][:-8]
    (d / snap.TIMING_STATE).write_bytes(msgpack.packb(t))
    rehash(d)
    assert "arrays.K.scal.data" in refused(tmp_path, "t")


@pytest.mark.parametrize("damage", ["truncate-timing", "wrong-type-run", "bad-member-name"])
def test_cosim_run_refuses_in_one_line_and_starts_no_qemu(original: Path, tmp_path: Path,
                                                          damage: str) -> None:
    d = copy(original, tmp_path, "t")
    if damage == "truncate-timing":
        data = (d / snap.TIMING_STATE).read_bytes()
        (d / snap.TIMING_STATE).write_bytes(data[: len(data) // 3])
        rehash(d)
    elif damage == "wrong-type-run":
        run = msgpack.unpackb((d / snap.RUN_STATE).read_bytes())
        run["digest"]["chain"] = "not bytes"
        (d / snap.RUN_STATE).write_bytes(msgpack.packb(run))
        rehash(d)
    else:
        m = json.loads((d / snap.MANIFEST).read_text())
        m["files"]["../../etc/passwd"] = m["files"][snap.RUN_STATE]
        (d / snap.MANIFEST).write_text(json.dumps(m))
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    qemus = qemu_pids()
    proc = cosim("run", "--snapshot", "t", "--timing", "--snapshot-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosim: error: snapshot t: "), proc.stderr
    assert "malformed" in lines[0] or "unexpected member" in lines[0]
    assert qemu_pids() <= qemus
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before, "nothing may change"
