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
digest: same settings), so an interrupted sweep resumes.

The table has one row per point: the axes' values, the status, and the
headline figures of the run (``headline``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

from .errors import CosimError
from .sweep_spec import Point, Spec

#: tries of a point whose worker died (Dask reschedules it elsewhere)
RETRIES = 2


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


def headline(summary: dict) -> dict[str, Any]:
    """The figures a row carries: cycles, simulated seconds, per-tier traffic, CPI stack,
    CHMU accuracy."""
    row: dict[str, Any] = {"instructions": summary.get("session_insns"),
                           "digest_run": summary.get("digest"),
                           "wall_seconds": summary.get("wall_seconds")}
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
        for k, v in acc.items():
            row[f"chmu_{name}_{k}"] = v
    return row


def run_point(point: Point, out: str, snapshot_dir: str | None) -> dict[str, Any]:
    """One point, in the worker's process: run it, keep its JSON, return its row.

    A failed run is a row with status ``failed`` and the error's last line;
    it raises only if the worker cannot write the output directory.
    """
    pdir = Path(out) / "points" / point.digest
    pdir.mkdir(parents=True, exist_ok=True)
    cfg = None
    if point.config:
        cfg = pdir / "config.toml"
        cfg.write_text(config_toml(point.config))
    argv = command(point, cfg, Path(snapshot_dir) if snapshot_dir else None)
    proc = subprocess.run(argv, capture_output=True, text=True)
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


def client(scheduler: str | None, slurm: bool, workers: int | None):  # -> distributed.Client
    """The Dask client: LocalCluster (default), a running scheduler, or Slurm workers."""
    from distributed import Client, LocalCluster
    if scheduler:
        return Client(scheduler)
    if slurm:
        from dask_jobqueue import SLURMCluster
        cluster = SLURMCluster(cores=1, processes=1, memory="8GB")
        cluster.scale(workers or 2)
        return Client(cluster)
    n = workers or os.cpu_count() or 1
    return Client(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None))


def run(spec: Spec, out: Path, snapshot_dir: Path | None, dask_client,
        on_progress: Callable[[int, int, int, int], None] | None = None) -> list[dict]:
    """Every point's row: those done before, and the rest run on the cluster."""
    from distributed import as_completed
    out.mkdir(parents=True, exist_ok=True)
    (out / ".probe").write_text("cosim sweep\n")
    problems = {w: msg for w, msg in dask_client.run(
        _check_shared, str(out), str(snapshot_dir) if snapshot_dir else None).items() if msg}
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
    futures = [dask_client.submit(run_point, p, str(out),
                                  str(snapshot_dir) if snapshot_dir else None,
                                  key=f"cosim-point-{p.digest}", pure=False, retries=RETRIES)
               for p in todo]
    finished = failed = 0
    for fut in as_completed(futures):
        try:
            row = fut.result()
        except Exception as e:     # the task itself failed (not the run): keep the sweep going
            point = todo[futures.index(fut)]
            row = {"digest": point.digest, **point.params, "status": "failed",
                   "error": f"{type(e).__name__}: {e}"[:500]}
        rows[row["digest"]] = row
        finished += row["status"] == "done"
        failed += row["status"] != "done"
        if on_progress is not None:
            on_progress(finished, failed, len(todo) - finished - failed, len(todo))
    return [rows[p.digest] for p in spec.points]


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
