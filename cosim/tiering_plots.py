"""PNG charts of ``cosim tiering --plot DIR`` (matplotlib, headless Agg backend).

Per policy, ``POLICY-timeline.png``: the CXL share of memory reads per
interval of simulated time (the model's ``timeline``) above the pages
promoted and demoted per interval (the guest's ``vmlog``); and
``POLICY-heatmap.png``: memory traffic per guest-physical address bin and
interval, DRAM (node 0) below the line, CXL (node 1) above it. Across
policies, ``cxl_share.png`` overlays their CXL-share curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .timing.plots import save_figure, plt


def _share(timeline: dict) -> tuple[np.ndarray, np.ndarray]:
    """Interval ends (ms) and the CXL share of reads in each (NaN where nothing was read)."""
    t = np.array(timeline["intervals"], dtype=float).reshape(-1, 4)
    reads = t[:, 0] + t[:, 2]
    share = np.divide(t[:, 2], reads, out=np.full(len(t), np.nan), where=reads > 0)
    ms = (np.arange(len(t)) + 1) * timeline["interval_ns"] / 1e6
    return ms, share


def _timeline(row: dict, title: str, path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    ms, share = _share(row["timeline"])
    top.plot(ms, share, color="tab:red")
    top.set_ylim(0, 1.02)
    top.set_ylabel("CXL share of reads")
    top.set_title(f"{row['policy']}: {title}")
    m = row["migrations"]
    if m["t_ms"]:
        width = np.diff([0.0, *m["t_ms"]])
        bottom.bar(m["t_ms"], m["promoted"], width=-width, align="edge", label="promoted",
                   color="tab:green")
        bottom.bar(m["t_ms"], [-d for d in m["demoted"]], width=-width, align="edge",
                   label="demoted", color="tab:blue")
        bottom.legend(fontsize="small")
    bottom.axhline(0, color="black", linewidth=0.5)
    bottom.set_ylabel("pages per interval")
    bottom.set_xlabel("simulated time since the run's start (ms)")
    return save_figure(fig, path)


def _heatmap(row: dict, title: str, path: Path) -> Path:
    heat = row["timeline"]["heatmap"]
    interval_ms = row["timeline"]["interval_ns"] / 1e6
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if heat["lines"]:
        grid = np.array(heat["lines"], dtype=float).T
        im = ax.imshow(np.log1p(grid), aspect="auto", origin="lower", cmap="inferno",
                       extent=(0, grid.shape[1] * interval_ms, -0.5, grid.shape[0] - 0.5))
        fig.colorbar(im, ax=ax, label="log(1 + lines to/from memory)")
        tiers = heat["bin_tiers"]
        if "cxl" in tiers:
            edge = tiers.index("cxl") - 0.5
            ax.axhline(edge, color="cyan", linewidth=0.8)
            ax.text(0, edge + 0.5, " CXL (node 1)", color="cyan", va="bottom", fontsize="small")
            ax.text(0, edge - 0.5, " DRAM (node 0)", color="cyan", va="top", fontsize="small")
    ax.set_xlabel("simulated time since the run's start (ms)")
    ax.set_ylabel(f"address bin ({len(heat['bin_addresses'])} over RAM)")
    ax.set_title(f"{row['policy']}: page hotness, {title}")
    return save_figure(fig, path)


def _shares(rows: list[dict], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    for row in rows:
        ms, share = _share(row["timeline"])
        ax.plot(ms, share, label=row["policy"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("simulated time since the run's start (ms)")
    ax.set_ylabel("CXL share of reads")
    ax.set_title(f"CXL share per policy: {title}")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def write_plots(rows: list[dict], out: Path, title: str) -> list[Path]:
    """Every chart of the comparison; ``out`` exists (checked writable before the runs)."""
    written = []
    for row in rows:
        written += [_timeline(row, title, out / f"{row['policy']}-timeline.png"),
                    _heatmap(row, title, out / f"{row['policy']}-heatmap.png")]
    written.append(_shares(rows, title, out / "cxl_share.png"))
    return written
