"""Running a sweep's points on Dask: one ``cosim run`` process per point, one tidy table.

Each point is a task on a Dask ``distributed`` cluster: an in-process
``LocalCluster`` sized to the machine's cores by default, a running cluster
with ``--scheduler ADDRESS``, or Slurm jobs through dask-jobqueue with
``--slurm``. A task writes the point's timing configuration next to its
results, runs ``python -m cosim.cli run --json`` in its own process (a
point is a whole simulation: QEMU, bridge and model), and keeps the full
JSON as ``points/DIGEST/run.json`` under the output directory, which every
worker must see (checked before the first point runs). A point that fails
is recorded with its error and the sweep goes on; Dask retries a task whose
worker died. A rerun skips the points whose ``run.json`` exists (same
digest: same settings, code, snapshot and kernel; ``inputs_digest``), so an
interrupted sweep resumes.

The table has one row per point: the axes' values, the status, and the
headline figures of the run (``headline``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

from . import paths
from .errors import CosimError
from .libqflex_bridge import die_with_parent
from .sweep_spec import Point, Spec

#: tries of a point whose task raised (a worker that dies is Dask's to reschedule)
RETRIES = 2
#: Dask keys of the points (the progress counts these on the workers)
KEY_PREFIX = "cosim-point-"
#: how often the progress bar is refreshed
POLL_SECONDS = 1.0


def inputs_digest(snapshot_manifests: list[Path], kernels: list[Path]) -> str:
    """A digest of everything besides a point's settings that decides its result: cosim's
    Python sources, the plugin, the QEMU patches, the snapshots' manifests (which hold
    every member's digest) and the kernels' bytes."""
    h = hashlib.sha256()
    sources = sorted((paths.REPO / "cosim").rglob("*.py")) + [paths.PLUGIN_SOURCE]
    for path in sources + snapshot_manifests + kernels:
        h.update(str(path.name).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(paths.patch_hash().encode())
    return h.hexdigest()[:16]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def config_toml(config: dict[str, dict[str, Any]]) -> str:
    """The point's timing-config overrides as a ``--config`` file."""
    lines = []
    for section, table in sorted(config.items()):
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(table.items())]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)     # what it writes, it reads back
    return text


def command(point: Point, config_file: Path | None, snapshot_dir: Path | None) -> list[str]:
    """``cosim run`` for one point."""
    f = point.flags
    argv = [sys.executable, "-m", "cosim.cli", "run", "--json"]
    for key in ("snapshot", "kernel", "smp", "quantum", "max_insns", "workload", "numa",
                "preset", "chmu"):
        if key in f:
            argv += [f"--{key.replace('_', '-')}", str(f[key])]
    if "args" in f:
        argv.append(f"--args={f['args']}")
    if f.get("timing") or config_file is not None:
        argv.append("--timing")
    if config_file is not None:
        argv += ["--config", str(config_file)]
    if snapshot_dir is not None:
        argv += ["--snapshot-dir", str(snapshot_dir)]
    return argv


#: a guest's ``RESULT name key=value ...`` line, and its numeric pairs (bounded: guest output)
_RESULT = re.compile(r"RESULT (\w{1,40}) (.*)")
_PAIR = re.compile(r"\b(\w{1,40})=(-?\d{1,19}(?:\.\d{1,12})?)\b")


def result_fields(lines: list[str]) -> dict[str, int | float]:
    """The numbers the guest's workload printed, as ``name.key`` columns (``gups.loop_ns``):
    the workload's own measure, by the guest's clock."""
    fields: dict[str, int | float] = {}
    for line in lines:
        m = _RESULT.fullmatch(line.strip())
        if m:
            for key, value in _PAIR.findall(m.group(2)):
                fields[f"{m.group(1)}.{key}"] = float(value) if "." in value else int(value)
    return fields


def headline(summary: dict) -> dict[str, Any]:
    """The figures a row carries: instructions, cycles, simulated seconds, per-tier traffic,
    the CPI stack, CHMU accuracy. All are deterministic (wall time stays in run.json), so
    the same sweep gives the same table wherever it runs."""
    row: dict[str, Any] = {"instructions": summary.get("session_insns"),
                           "digest_run": summary.get("digest")}
    row.update(result_fields(summary.get("guest_results", [])))
    timing = summary.get("timing")
    if timing is None:
        return row
    row["cycles"] = timing["cycles"]
    row["seconds"] = timing["seconds"]
    for tier, t in timing["memory"].items():
        for k in ("reads", "writes", "mean_latency_ns", "p99_latency_ns", "bandwidth_gbps"):
            row[f"{tier}_{k}"] = t[k]
    cores = timing["cores"]
    insns = sum(c["instructions"] for c in cores)
    for cat in cores[0]["cpi_stack"] if cores else ():
        # CPI stack of the whole machine: each core's weighted by its instructions
        row[f"cpi_{cat}"] = (sum(c["cpi_stack"][cat] * c["instructions"] for c in cores) / insns
                             if insns else 0.0)
    for name, acc in timing.get("chmu", {}).get("accuracy", {}).items():
        for k, v in (acc.items() if isinstance(acc, dict) else [("score", acc)]):
            row[f"chmu_{name}_{k}"] = v
    return row


def run_point(point: Point, out: str, snapshot_dir: str | None) -> dict[str, Any]:
    """One point, in the worker's process: run it, keep its JSON, return its row.

    A failed run is a row with status ``failed`` and the error's last line;
    it raises only if the worker cannot see or write the output directory.
    """
    if not (Path(out) / ".probe").is_file():
        # a worker that joined after the check, on a machine that does not share the output
        raise CosimError(f"this worker cannot see {out} (the output directory must be shared "
                         "with every worker)")
    pdir = Path(out) / "points" / point.digest
    pdir.mkdir(parents=True, exist_ok=True)
    cfg = None
    if point.config:
        cfg = pdir / "config.toml"
        cfg.write_text(config_toml(point.config))
    argv = command(point, cfg, Path(snapshot_dir) if snapshot_dir else None)
    # the run dies with its worker: a killed worker leaves no cosim run (nor QEMU) behind,
    # and Dask runs the point again elsewhere
    proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=die_with_parent)
    row = {"digest": point.digest, **point.params}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        (pdir / "error.txt").write_text(proc.stderr)
        return {**row, "status": "failed", "error": lines[-1][:500]}
    summary = json.loads(proc.stdout)
    # written under a temporary name and renamed: a run.json is always whole (resume trusts it)
    fd, tmp = tempfile.mkstemp(prefix=".run.", dir=pdir)
    with os.fdopen(fd, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, pdir / "run.json")
    return {**row, "status": "done", "error": "", **headline(summary)}


def done_row(point: Point, out: Path) -> dict[str, Any] | None:
    """The row of a point an earlier run of the sweep finished, if any (resume)."""
    path = out / "points" / point.digest / "run.json"
    if not path.is_file():
        return None
    return {"digest": point.digest, **point.params, "status": "done", "error": "",
            **headline(json.loads(path.read_text()))}


def _check_shared(out: str, snapshot_dir: str | None) -> str:
    """Run on each worker: can it see the sweep's directories? ('' if so)."""
    probe = Path(out) / ".probe"
    if not probe.is_file():
        return f"cannot see {probe} (the output directory must be shared with every worker)"
    if snapshot_dir and not Path(snapshot_dir).is_dir():
        return f"cannot see the snapshot directory {snapshot_dir}"
    return ""


@contextlib.contextmanager
def client(scheduler: str | None, slurm: bool, workers: int | None) -> Iterator[Any]:
    """The Dask client (a ``distributed.Client``), closed with its cluster at the end: a
    LocalCluster of ``workers`` one-thread processes (default: the machine's cores), a
    running scheduler, or Slurm workers (dask-jobqueue; queue, account and walltime come
    from its configuration, ``~/.config/dask/jobqueue.yaml``)."""
    from distributed import Client, LocalCluster
    if scheduler:
        try:
            c = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise CosimError(f"cosim sweep --scheduler {scheduler}: cannot reach it ({e}); "
                             "want the address a `dask scheduler` printed, tcp://HOST:PORT") \
                from None
        with c:
            yield c
        return
    if slurm:
        if shutil.which("sbatch") is None:
            raise CosimError("cosim sweep --slurm: sbatch is not on PATH (run it where Slurm's "
                             "commands are, or start workers yourself and use --scheduler)")
        import dask
        from dask_jobqueue import SLURMCluster
        cluster = SLURMCluster(cores=1, processes=1,
                               memory=dask.config.get("jobqueue.slurm.memory", None) or "8GB")
        cluster.scale(workers or 2)
    else:
        # errors only: an interrupted sweep's cancelled tasks are not news
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    with cluster, Client(cluster) as c:
        yield c


def _executing(dask_worker: Any) -> int:
    """On a worker: how many sweep points it is running now (not merely holding)."""
    return sum(1 for ts in dask_worker.state.executing if str(ts.key).startswith(KEY_PREFIX))


def run(spec: Spec, out: Path, snapshot_dir: Path | None, dask_client: Any,
        on_progress: Callable[[int, int, int], None] | None = None) -> tuple[list[dict], int]:
    """Every point's row, in the spec's order, and how many were done by an earlier run.

    Points without a result run on the cluster; ``on_progress(done, failed, running)`` is
    called about once a second and after each point, counting this run's points.
    """
    from distributed import as_completed
    out.mkdir(parents=True, exist_ok=True)
    (out / ".probe").write_text("cosim sweep\n")
    if not dask_client.scheduler_info()["workers"]:
        print("cosim sweep: waiting for a worker to join the cluster", file=sys.stderr)
        dask_client.wait_for_workers(1)
    shared_snaps = str(snapshot_dir) if snapshot_dir else None
    problems = {w: msg for w, msg in dask_client.run(_check_shared, str(out), shared_snaps).items()
                if msg}
    if problems:
        worker, msg = sorted(problems.items())[0]
        raise CosimError(f"cosim sweep: worker {worker} {msg}")
    rows: dict[str, dict] = {}
    todo = []
    for p in spec.points:
        row = done_row(p, out)
        if row is None:
            todo.append(p)
        else:
            rows[p.digest] = row
    earlier = len(rows)
    futures = {dask_client.submit(run_point, p, str(out), shared_snaps,
                                  key=KEY_PREFIX + p.digest, pure=False, retries=RETRIES): p
               for p in todo}
    done = failed = 0
    pending = as_completed(futures)
    while not pending.is_empty():
        for fut in pending.next_batch(block=False):
            try:
                row = fut.result()
            except Exception as e:     # the task itself failed (not the run): go on
                p = futures[fut]
                row = {"digest": p.digest, **p.params, "status": "failed",
                       "error": f"{type(e).__name__}: {e}"[:500]}
            rows[row["digest"]] = row
            done += row["status"] == "done"
            failed += row["status"] != "done"
        if on_progress is not None:
            try:
                running = sum(dask_client.run(_executing).values())
            except OSError:            # a worker went away between the calls: next time
                running = 0
            on_progress(done, failed, running)
        if not pending.is_empty():
            time.sleep(POLL_SECONDS)
    return [rows[p.digest] for p in spec.points], earlier


def write_table(rows: list[dict], path: Path) -> Path:
    """The tidy table: Parquet, or CSV if ``path`` ends in .csv."""
    import pandas as pd
    frame = pd.DataFrame(rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    if path.suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
