"""The timing kernels alone: ns per trace record, on traces of real runs.

Runs riscv workloads under ``--timing`` once to record every kernel call
(the trace records and turn boundaries each call was given), then replays
those calls on a fresh model, timed, with nothing else running: no QEMU,
no bridge, no Python between calls. It prints ns per record and a digest
of everything the kernels computed (cache, core and memory state, every
turn's ticks; cache lines and recency as ``canonical_state`` gives them, so
a new layout of the same state digests the same), so a change meant to
speed the kernels up without changing what they compute shows the same
digest before and after.

    .venv/bin/python bench/bench_kernels.py [--insns 20000000] [--repeat 3] [--against REV]

``--against REV`` replays the same calls on the kernels of git revision
REV too, alternating with this checkout's in one run (this machine is
shared, so only times measured side by side compare), each replay in a
process of its own (two versions' kernels in one process did not time
alike: the second ran up to 4x slower), and prints the ratio and whether
the two computed the same digest. REV's kernel modules and array layout
(``state``) are extracted under ``build/kernel-ab/`` as a package of its
own.

Captures are cached under ``build/kernel-traces/`` (delete to re-record).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cosim import build, quantum  # noqa: E402
from cosim.boards import VirtBoard, roi_addresses  # noqa: E402
from cosim.libqflex_bridge import Bridge, QemuConfig  # noqa: E402
from cosim.timing import config as timing_config  # noqa: E402
from cosim.timing import core, engine, rounds, state  # noqa: E402

RAM_BASE, RAM_SIZE = VirtBoard.RAM_BASE, 1 << 30
# (label, guest, harts): streaming, random updates, pointer chase
CASES = (("stream 1h", "stream-n1m-r8", 1), ("stream 4h", "stream-n1m-r8", 4),
         ("gups 1h", "gups-ws16m-n8m", 1), ("gups 4h", "gups-ws16m-n8m", 4),
         ("pchase 1h", "pchase-ws16777216-it400000", 1))
CACHE = REPO / "build" / "kernel-traces"
AB = REPO / "build" / "kernel-ab"
KERNEL_MODULES = ("caches", "hierarchy", "memory", "core")
#: ... and the module that lays out their arrays (a revision's kernels need its own layout)
LAYOUT_MODULE = "state"
#: with --against: processes per version, alternating, each replaying --repeat times
PROCESSES = 2


def _model(kernel: str, smp: int, layout: types.ModuleType = state) -> state.Model:
    return layout.build(timing_config.load(), smp, [(RAM_BASE, RAM_SIZE)],
                        roi=roi_addresses(build.guest_elf(kernel)))


def capture(kernel: str, smp: int, insns: int) -> list[tuple[str, tuple]]:
    """Every kernel call of a round-order run of ``insns`` instructions, inputs copied.

    The engine's modules see a stand-in for ``core`` whose kernels record
    their inputs; ``core`` itself is left alone, as the compiled kernels
    call each other through it.
    """
    calls: list[tuple[str, tuple]] = []

    def recorder(name: str):
        kernel_fn = getattr(core, name)

        def wrapper(K, H, *args):
            calls.append((name, tuple(np.copy(a) if isinstance(a, np.ndarray) else a
                                      for a in args)))
            return kernel_fn(K, H, *args)
        return wrapper

    recording = types.SimpleNamespace(**{k: getattr(core, k) for k in dir(core)
                                         if not k.startswith("__")})
    for name in ("run_turn", "run_turns", "run_round"):
        setattr(recording, name, recorder(name))
    model = _model(kernel, smp)
    saved = engine.core, rounds.core
    engine.core = rounds.core = recording
    try:
        with Bridge(QemuConfig(kernel=build.guest_elf(kernel), smp=smp, quantum=1000,
                                mode="trace", clock="model")) as bridge:
            rounds.RoundRun(bridge, quantum.Schedule(smp), model, max_insns=insns).run()
    finally:
        engine.core, rounds.core = saved
    return calls


def _records(call: tuple[str, tuple]) -> int:
    """Trace records of one call (every kernel takes them second, after the core)."""
    return len(call[1][1])


def kernels_of(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The ``core`` kernel module and the ``state`` layout of git revision ``rev``.

    Imported as a package of its own; its ``state`` takes the configuration
    classes of this checkout.
    """
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"bench_kernels: --against {rev!r} is not a git revision of {REPO}")
    name = f"kernels_{sha.stdout.strip()[:12]}"
    package = AB / name
    if not (package / "__init__.py").exists():
        package.mkdir(parents=True, exist_ok=True)
        for module in (*KERNEL_MODULES, LAYOUT_MODULE):
            source = subprocess.run(["git", "show", f"{rev}:cosim/timing/{module}.py"], cwd=REPO,
                                    check=True, capture_output=True).stdout
            if module == LAYOUT_MODULE:
                source = source.replace(b"from .config import", b"from cosim.timing.config import")
            (package / f"{module}.py").write_bytes(source)
        (package / "__init__.py").write_text(f"# kernels of {rev}, for bench_kernels --against\n")
    if str(AB) not in sys.path:
        sys.path.insert(0, str(AB))
    return (importlib.import_module(f"{name}.core"),
            importlib.import_module(f"{name}.{LAYOUT_MODULE}"))


def replay(model: state.Model, calls: list[tuple[str, tuple]],
           kernels: types.ModuleType = core) -> tuple[float, str]:
    """(seconds in the kernels, digest of the model and every output) over ``calls``."""
    K, H = model.K, model.H
    h = hashlib.blake2b(digest_size=12)
    spent = 0.0
    for name, args in calls:
        args = tuple(np.copy(a) if isinstance(a, np.ndarray) else a for a in args)
        t = time.perf_counter()
        out = getattr(kernels, name)(K, H, *args)
        spent += time.perf_counter() - t
        if name == "run_turn":
            h.update(np.int64(out).tobytes())
        elif name == "run_turns":
            h.update(args[-1].tobytes())
        else:
            h.update(args[4].tobytes())
            h.update(args[5].tobytes())
    for a in canonical_state(model):
        h.update(np.ascontiguousarray(a).tobytes())
    return spent, h.hexdigest()


def _ranks(stamps: np.ndarray, groups: int) -> np.ndarray:
    """Recency ranks (0 = latest) of stamps in ``groups`` rows, ties in index order."""
    st = stamps.reshape(groups, -1)
    order = np.argsort(-st, axis=1, kind="stable")
    r = np.empty(st.shape, dtype=np.uint8)
    r[np.arange(groups)[:, None], order] = np.arange(st.shape[1], dtype=np.uint8)
    return r.ravel()


def canonical_state(model: state.Model) -> list[np.ndarray]:
    """Everything the kernels keep, in a form that does not depend on how it is laid out.

    Cache lines as (line << 2 | MESI state) and the recency rank of each way
    in its set, whether a version keeps them so or as tags, states and time
    stamps (before 2026-12-06); the prefetchers' streams by their recency
    order rather than by the values of the clock that stamped them. So a
    version with another layout that computes the same shows the same digest.
    """
    K, H = model.K, model.H
    C = H.C
    if hasattr(C, "key"):
        key, rank = C.key, C.rank
    else:
        key = (C.tags.astype(np.int64) << 2) | C.state.astype(np.int64)
        rank = np.concatenate([_ranks(C.stamp[o:o + s * w], s) for o, s, w in C.geom[:, :3]])
    # the stream tables by field (2026-12-06 on) rather than by stream
    pf = H.pf.copy() if hasattr(C, "key") else H.pf.transpose(0, 2, 1).copy()
    ncores, _, streams = pf.shape
    pf[:, 2, :] = _ranks(pf[:, 2, :].ravel(), ncores).reshape(ncores, streams)
    # the CHMU's arrays (2026-12-06 on) hold nothing the model's timing reads
    memory = [getattr(H.Mm, f) for f in H.Mm._fields if not f.startswith("chmu")]
    return [*K, key, rank, C.ready, C.src, C.geom, C.stats, C.rng, *memory, H.hp, pf, H.own]


def load(label: str, kernel: str, smp: int, insns: int) -> list[tuple[str, tuple]]:
    path = CACHE / f"{kernel}-{smp}h-{insns}.pkl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"  recording {label} ({insns / 1e6:.0f} M insns) ...", flush=True)
        calls = capture(kernel, smp, insns)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(calls, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.rename(path)
    with path.open("rb") as f:
        return pickle.load(f)


def replay_in_process(version: str, case: tuple[str, str, int], insns: int,
                      repeat: int) -> tuple[float, str]:
    """(best seconds, digest) of ``repeat`` replays of ``case`` on ``version``'s kernels,
    in a process of its own (``--one``)."""
    label, kernel, smp = case
    out = subprocess.run([sys.executable, __file__, "--one", version, "--case", label,
                          "--insns", str(insns), "--repeat", str(repeat)],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"bench_kernels: replaying {label} on {version} failed:\n{out.stderr}")
    seconds, digest = out.stdout.split()
    return float(seconds), digest


def one(version: str, case: tuple[str, str, int], insns: int, repeat: int) -> None:
    """Print the best seconds and the digest of ``repeat`` replays (``--one``)."""
    label, kernel, smp = case
    kernels, layout = (core, state) if version == "this" else kernels_of(version)
    calls = load(label, kernel, smp, insns)
    results = [replay(_model(kernel, smp, layout), calls, kernels) for _ in range(repeat)]
    digests = {d for _, d in results}
    if len(digests) != 1:
        raise SystemExit(f"{label}: replays differ: {digests}")
    print(min(s for s, _ in results), digests.pop())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--insns", type=int, default=20_000_000, help="instructions per capture")
    parser.add_argument("--repeat", type=int, default=3, help="replays per case; the fastest counts")
    parser.add_argument("--case", action="append", help="only these labels (e.g. 'gups 4h')")
    parser.add_argument("--against", metavar="REV", help="also time the kernels of git revision REV")
    parser.add_argument("--one", metavar="VERSION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = [c for c in CASES if not args.case or c[0] in args.case]
    if args.one:
        one(args.one, cases[0], args.insns, args.repeat)
        return 0
    versions = ["this"] + ([args.against] if args.against else [])
    if args.against:
        kernels_of(args.against)        # extracted (and checked) before the first replay
    print(f"kernels alone on recorded round-order traces, best of {args.repeat}"
          + (f" in each of {PROCESSES} processes per version, alternating" if args.against
             else ""))
    cols = "".join(f" {'ns/rec ' + v:>16}" for v in versions)
    print(f"{'case':<10} {'Mrecords':>8} {'calls':>7}{cols}  digest")
    for case in cases:
        label, kernel, smp = case
        calls = load(label, kernel, smp, args.insns)
        nrec, ncalls = sum(_records(c) for c in calls), len(calls)
        del calls
        if args.against:
            # one process per replay, alternating: two versions' kernels in one
            # process do not time alike (the second ran up to 4x slower here)
            runs: dict[str, list[tuple[float, str]]] = {v: [] for v in versions}
            for _ in range(PROCESSES):
                for v in versions:
                    runs[v].append(replay_in_process(v, case, args.insns, args.repeat))
        else:
            runs = {"this": [replay_in_process("this", case, args.insns, args.repeat)]}
        digests = {v: {d for _, d in r} for v, r in runs.items()}
        if any(len(d) != 1 for d in digests.values()):
            print(f"{label}: replays differ: {digests}", file=sys.stderr)
            return 1
        digest = {v: d.pop() for v, d in digests.items()}
        best = {v: min(t for t, _ in r) for v, r in runs.items()}
        line = f"{label:<10} {nrec / 1e6:>8.2f} {ncalls:>7}"
        line += "".join(f" {best[v] / nrec * 1e9:>16.1f}" for v in versions)
        line += f"  {digest['this']}"
        if args.against:
            same = digest[args.against] == digest["this"]
            line += (f"  this/{args.against} = {best['this'] / best[args.against]:.2f}, "
                     f"digest {'same' if same else 'DIFFERS'}")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
