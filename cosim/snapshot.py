"""Snapshot directories: layout, manifest, atomic writes, checks on restore.

A snapshot is one directory under the snapshot root (``--snapshot-dir``,
default ``<user data dir>/cosim/snapshots``)::

    NAME/machine.state    QEMU's machine state (savevm-ext, qemu_patches/0006)
    NAME/plugin.msgpack   the plugin's dependence rings
    NAME/run.msgpack      the schedule's totals and the digest chain
    NAME/timing.msgpack   the timing model's arrays (only if saved under --timing)
    NAME/manifest.json    what it was taken with, and a BLAKE2b of every file

It is written as ``.NAME.tmp-PID`` and renamed to ``NAME`` only once the
manifest, written last, is complete; a save killed half-way leaves only the
temporary name, which ``list`` ignores and a later save removes. Nothing is
deleted or overwritten without ``force``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from elftools.elf.elffile import ELFFile

from . import snapshot_format as fmt
from .errors import CosimError
# MACHINE_STATE too: the member names are part of this module's interface
from .snapshot_format import (FORMAT, MACHINE_STATE, MANIFEST, PLUGIN_STATE,  # noqa: F401
                              RUN_STATE, TIMING_STATE)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TMP_MARK = ".tmp-"


def default_root() -> Path:
    """Where snapshots live unless ``--snapshot-dir`` says otherwise."""
    return platformdirs.user_data_path("cosim") / "snapshots"


def check_name(name: str) -> str:
    """A snapshot name is one path component: letters, digits, ``.``, ``_``, ``-``."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise CosimError(
            f"snapshot name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (no '/', no '..')")
    return name


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def build_id(binary: Path) -> str:
    """The GNU build id of an ELF (QEMU's binary), or its BLAKE2b when it has none."""
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if section["sh_type"] != "SHT_NOTE":
                continue
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    return file_digest(binary)


@dataclass
class Snapshot:
    """A complete snapshot on disk, checked against its manifest.

    ``plugin``, ``run`` and ``timing`` are its msgpack members, decoded and
    checked by ``Store.load`` (``timing`` is None without timing state);
    they stay None for a snapshot loaded without ``verify`` (a listing).
    """

    name: str
    path: Path
    manifest: dict
    plugin: dict | None = None
    run: dict | None = None
    timing: dict | None = None

    @property
    def has_timing(self) -> bool:
        return TIMING_STATE in self.manifest["files"]


class Store:
    """The snapshots under one root directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def log_path(self, filename: str) -> Path:
        """A log kept beside the snapshots (a boot's console), the directory made if needed."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / filename

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def refuse_existing(self, name: str, force: bool) -> None:
        """The one-line error for saving over a snapshot without ``--force``."""
        if self.exists(name) and not force:
            raise CosimError(f"snapshot {name} already exists in {self.root}; "
                             "choose another name or add --force to replace it")

    def check_can_save(self, name: str, force: bool) -> None:
        """Before a run that ends in a save: the name is free (or ``force``) and the
        directory writable, so a long run is not lost to a late error."""
        self.refuse_existing(name, force)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as e:
            raise CosimError(f"snapshot directory {self.root}: cannot write there "
                             f"({e.strerror}); give a writable --snapshot-dir") from None

    def begin(self, name: str, force: bool) -> Path:
        """A fresh temporary directory to write snapshot ``name`` into."""
        self.refuse_existing(name, force)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        tmp = self.root / f".{name}{TMP_MARK}{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        return tmp

    def commit(self, tmp: Path, name: str, manifest: dict, force: bool) -> Snapshot:
        """Write the manifest (hashing every file), then put ``tmp`` in place as ``name``.

        Every member and both directories are fsynced first, so what the
        name points to is complete even after a power loss. With ``force``
        an existing snapshot is swapped out in one step (``renameat2``
        RENAME_EXCHANGE) and deleted only once the new one is in place;
        where the file system cannot exchange, it is renamed aside and put
        back if the new one cannot take its name. Either way the name holds
        the old snapshot or the new one, never neither.
        """
        manifest = dict(manifest, format=FORMAT, name=name, files={
            p.name: {"bytes": p.stat().st_size, "blake2b": file_digest(p)}
            for p in sorted(tmp.iterdir()) if p.name != MANIFEST})
        for p in tmp.iterdir():
            _fsync(p)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        final = self.path(name)
        if not final.exists():
            tmp.rename(final)
        elif not force:
            raise CosimError(f"snapshot {name} appeared in {self.root} during the save; "
                             "add --force to replace it")
        elif _exchange(tmp, final):
            _fsync(self.root)
            shutil.rmtree(tmp, ignore_errors=True)      # the old snapshot, now at tmp
        else:
            old = self.root / f".{name}.old{TMP_MARK}{os.getpid()}"
            final.rename(old)
            try:
                tmp.rename(final)
            except OSError:
                old.rename(final)
                raise
            _fsync(self.root)
            shutil.rmtree(old, ignore_errors=True)
        _fsync(self.root)
        return Snapshot(name, final, manifest)

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def load(self, name: str, verify: bool = True) -> Snapshot:
        """A snapshot, checked; one-line errors naming the file and the field.

        The manifest is always checked (snapshot_format); with ``verify``
        every member is also hashed against it and the msgpack members are
        decoded and checked, so a malformed snapshot is refused before QEMU
        starts.
        """
        path = self.path(name)
        if not path.is_dir():
            have = ", ".join(self.names()) or "none"
            raise CosimError(f"snapshot {name}: not found in {self.root} (have: {have})")
        try:
            blob = (path / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise CosimError(f"snapshot {name}: {path / MANIFEST} is missing; the snapshot is "
                             "incomplete or not a cosim snapshot (nothing was deleted)") from None
        except OSError as e:
            raise CosimError(f"snapshot {name}: {path / MANIFEST}: {e.strerror}") from None
        manifest = self._checked(name, path / MANIFEST, fmt.manifest, blob)
        s = Snapshot(name, path, manifest)
        if verify:
            for member, meta in manifest["files"].items():
                self._verify(name, path / member, meta)
            smp = manifest["machine"]["smp"]
            s.plugin = self._checked(name, path / PLUGIN_STATE, fmt.plugin_state,
                                     (path / PLUGIN_STATE).read_bytes(), smp)
            s.run = self._checked(name, path / RUN_STATE, fmt.run_state,
                                  (path / RUN_STATE).read_bytes(), smp)
            if s.has_timing:
                s.timing = self._checked(name, path / TIMING_STATE, fmt.timing_state,
                                         (path / TIMING_STATE).read_bytes(), smp)
        return s

    @staticmethod
    def _checked(name: str, path: Path, check, blob: bytes, *args: int) -> dict:
        try:
            return check(blob, *args)
        except fmt.FormatError as e:
            raise CosimError(f"snapshot {name}: {path.name} is malformed: {e} "
                             "(nothing was changed)") from None

    def _verify(self, name: str, path: Path, meta: dict) -> None:
        if not path.is_file() or path.is_symlink():
            raise CosimError(f"snapshot {name}: {path.name} is missing or not a plain file "
                             "(nothing was deleted)")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise CosimError(f"snapshot {name}: {path.name} is truncated or altered "
                             f"({size} bytes, the manifest says {meta['bytes']})")
        if file_digest(path) != meta["blake2b"]:
            raise CosimError(f"snapshot {name}: {path.name} is corrupt (its BLAKE2b does not "
                             "match the manifest)")

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def list(self) -> list[Snapshot | tuple[str, str]]:
        """Every snapshot, or (name, why it is unreadable); files are not hashed here."""
        out: list[Snapshot | tuple[str, str]] = []
        for name in self.names():
            try:
                out.append(self.load(name, verify=False))
            except CosimError as e:
                out.append((name, str(e).split(": ", 1)[-1]))
        return out

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not path.is_dir():
            raise CosimError(f"snapshot {name}: not found in {self.root}")
        trash = self.root / f".{name}.rm{TMP_MARK}{os.getpid()}"
        path.rename(trash)
        shutil.rmtree(trash)

    def _remove_stale_temporaries(self) -> None:
        """Temporaries of saves whose process is gone (killed half-way)."""
        for p in self.root.glob(f".*{TMP_MARK}*"):
            pid = p.name.rsplit(TMP_MARK, 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: renameat2(2) flag (linux/fs.h); Python has no binding for it, and ctypes
#: is simpler than a dependency for one call
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the kernel or file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def size_on_disk(path: Path) -> int:
    """Bytes allocated (sparse files count what they use)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
