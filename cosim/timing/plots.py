"""PNG charts of a timing run (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402

from ..errors import CosimError  # noqa: E402


def write_plots(doc: dict, out: Path) -> list[Path]:
    """CPI stack per core, memory read latency distribution, hottest pages.

    ``out`` exists: ``cli.writable_dir`` made and probed it before the run.
    """
    written = [_cpi_stacks(doc, out / "cpi_stack.png"), _latency(doc, out / "latency.png"),
               _hot_pages(doc, out / "page_hotness.png")]
    if "chmu" in doc:
        written += [_chmu_heatmap(doc["chmu"], out / "chmu_heatmap.png"),
                    _chmu_accuracy(doc["chmu"], out / "chmu_accuracy.png")]
    return written


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write and close ``fig`` (every chart of cosim goes through here); an
    unwritable path is a one-line error."""
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise CosimError(f"cannot write the chart {path}: {e.strerror}") from None
    finally:
        plt.close(fig)
    return path


def _cpi_stacks(doc: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    cores = doc["cores"]
    bottom = [0.0] * len(cores)
    for cat in cores[0]["cpi_stack"]:
        vals = [c["cpi_stack"][cat] for c in cores]
        if any(vals):
            ax.bar([str(c["core"]) for c in cores], vals, bottom=bottom, label=cat)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("core")
    ax.set_ylabel("cycles per instruction")
    ax.set_title("CPI stack")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def _latency(doc: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, tier in doc["memory"].items():
        hist = tier["latency_histogram"]
        if hist:
            ax.step([c for c, _ in hist], [n for _, n in hist], where="mid", label=name)
    ax.set_xlabel("memory read latency (cycles)")
    ax.set_ylabel("reads")
    ax.set_yscale("log")
    ax.set_title("Memory read latency distribution")
    ax.legend()
    return save_figure(fig, path)


def _hot_pages(doc: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, reads, writes = [], [], []
    for tier, pages in doc["hot_pages"].items():
        for p in pages:
            labels.append(f"{tier} {p['page']}")
            reads.append(p["reads"])
            writes.append(p["writes"])
    ax.barh(labels, reads, label="reads")
    ax.barh(labels, writes, left=reads, label="writes")
    ax.set_xlabel("64-byte lines to/from memory")
    ax.set_title("Hottest 4 KiB pages")
    ax.invert_yaxis()
    ax.legend()
    return save_figure(fig, path)


def _chmu_heatmap(c: dict, path: Path) -> Path:
    """Device accesses per address bin and epoch, as DAMON's heatmaps show access frequency."""
    heat = c["heatmap"]
    fig, ax = plt.subplots(figsize=(8, 4))
    if heat["counts"]:
        # rows: every instance's bins, lowest address at the bottom
        grid = np.array(heat["counts"], dtype=float).reshape(len(heat["counts"]), -1).T
        first = heat["first_epoch"]
        im = ax.imshow(np.log1p(grid), aspect="auto", origin="lower", cmap="inferno",
                       extent=(first - 0.5, first + grid.shape[1] - 0.5, -0.5, grid.shape[0] - 0.5))
        fig.colorbar(im, ax=ax, label="log(1 + device accesses)")
    bounds = ", ".join(f"{i['start']}..{i['end']}" for i in c["instances"])
    ax.set_xlabel(f"epoch ({c['config']['epoch_us']:g} us)")
    ax.set_ylabel(f"address bin ({heat['rows']} per device)")
    ax.set_title(f"CXL device hotness: {bounds}")
    return save_figure(fig, path)


def _chmu_accuracy(c: dict, path: Path) -> Path:
    """Each tracker's precision and recall per epoch against the oracle."""
    fig, ax = plt.subplots(figsize=(8, 4))
    first = c["heatmap"]["first_epoch"]
    names = sorted({k for epoch in c["timeline"] for k in epoch})
    for name in names:
        xs = [first + e for e, epoch in enumerate(c["timeline"]) if name in epoch]
        ax.plot(xs, [c["timeline"][x - first][name][0] for x in xs], label=f"{name} precision")
        ax.plot(xs, [c["timeline"][x - first][name][1] for x in xs], "--",
                label=f"{name} recall")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"epoch ({c['config']['epoch_us']:g} us)")
    ax.set_ylabel("against the oracle")
    ax.set_title(f"CHMU hot-list accuracy ({c['config']['counters']} counters, "
                 f"unit {c['config']['unit_bytes']} B)")
    ax.legend(fontsize="small")
    return save_figure(fig, path)
