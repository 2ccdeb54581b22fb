"""PNG charts of a timing run (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)

from ..errors import CosimError  # noqa: E402


def write_plots(doc: dict, out: Path) -> list[Path]:
    """CPI stack per core, memory read latency distribution, hottest pages.

    ``out`` exists: ``cli.writable_dir`` made and probed it before the run.
    """
    written = [_cpi_stacks(doc, out / "cpi_stack.png"), _latency(doc, out / "latency.png"),
               _hot_pages(doc, out / "page_hotness.png")]
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise CosimError(f"--plot: cannot write {path}: {e.strerror}") from None
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)
