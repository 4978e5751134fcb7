"""Progress lines for long work."""

from lib.progress import Progress


def test_progress_line_reports_done_rate_and_eta():
    """The progress line names done/total, per-second rates of counters, and an ETA."""
    p = Progress("evaluate", total=4, unit="questions", interval_s=3600)
    p.update(1, samples=64, tokens=6400)
    line = p.line()
    assert line.startswith("evaluate: 1/4 questions | samples 64 (") and "tokens 6,400 (" in line and "ETA " in line
