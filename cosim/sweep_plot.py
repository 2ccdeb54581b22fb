"""``cosim sweep plot TABLE --x FIELD --y STAT [--hue FIELD]``: the common chart of a sweep."""

from __future__ import annotations

from pathlib import Path

from .errors import CosimError
from .timing.plots import save_figure, plt


def plot(table: Path, x: str, y: str, hue: str | None) -> Path:
    """A line per value of ``hue`` (one line without), points sorted by ``x``; ``y`` is a
    column or ``A/B``, the ratio of two; the PNG sits next to the table."""
    import pandas as pd
    try:
        frame = pd.read_csv(table) if table.suffix == ".csv" else pd.read_parquet(table)
    except (OSError, ValueError) as e:
        raise CosimError(f"cosim sweep plot {table}: cannot read it ({e})") from None
    if "status" in frame.columns:
        frame = frame[frame["status"] == "done"]
    frame = frame.copy()
    for field in (x, *y.split("/", 1), hue):
        if field is not None and field not in frame.columns:
            raise CosimError(f"cosim sweep plot: no column {field!r} in {table}; columns: "
                             f"{', '.join(map(str, frame.columns))}")
    if "/" in y:
        # a ratio of two columns: the common "per unit of work" figure (gups.loop_ns/gups.updates)
        num, den = y.split("/", 1)
        frame[y] = frame[num] / frame[den]
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = frame.groupby(hue) if hue else [(None, frame)]
    for value, part in groups:
        part = part.sort_values(x)
        ax.plot(part[x], part[y], marker="o", label=f"{hue}={value}" if hue else None)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} against {x}")
    if hue:
        ax.legend(fontsize="small")
    out = table.with_name(f"{table.stem}-{y.replace('/', '-per-')}-vs-{x}.png")
    return save_figure(fig, out)
