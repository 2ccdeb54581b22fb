"""Progress of a sweep, off a terminal (log lines) and on one (tqdm bar); nothing runs."""

from __future__ import annotations

import io

from cosim import progress
from cosim.progress import SweepProgress


def test_sweep_log_lines_count_points_and_give_an_eta(monkeypatch):
    clock = iter([100.0, 110.0, 111.0, 130.0, 131.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = SweepProgress(total=6, earlier=2, stream=out, live=False)
    bar.update(1, 0, 2)       # t=110: one point in 10 s, three to go
    bar.update(1, 0, 2)       # t=111: nothing new within LOG_EVERY_S: no line
    bar.update(3, 1, 0)       # t=130: all finished
    bar.close()
    assert out.getvalue().splitlines() == [
        "[cosim sweep] 3/6 points (2 from an earlier run), 0 failed, 2 running, ETA 30 s",
        "[cosim sweep] 6/6 points (2 from an earlier run), 1 failed, 0 running"]


def test_sweep_bar_on_a_terminal_shows_counts():
    out = io.StringIO()
    bar = SweepProgress(total=4, earlier=1, stream=out, live=True)
    bar.update(2, 1, 0)
    bar.close()
    text = out.getvalue()
    assert "4/4" in text and "failed=1" in text and "done=3" in text
