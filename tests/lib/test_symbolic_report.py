"""GSM-Symbolic report: instance sets, original accuracy and the per-template drop, from stored samples."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from lib.sample_store import SCHEMA, SampleStore
from lib.symbolic_report import compare, question_scores, write_report

ORIG = "gsm_symbolic_original/{t}/gsm8k-test-{o}"
INST = "gsm_symbolic/{t}/gsm8k-test-{o}/{j}"
TEMPLATES = {"0000": 473, "0001": 103, "0002": 184}


def _table(rows: list[tuple[str, int, str]]) -> pa.Table:
    """Stored-sample rows (question_id, sample_idx, status); other columns get placeholder values."""
    filler = {f.name: ("x" if pa.types.is_string(f.type) else 0) for f in SCHEMA}
    data = {name: [] for name in SCHEMA.names}
    for qid, idx, status in rows:
        for name in SCHEMA.names:
            data[name].append({"question_id": qid, "sample_idx": idx, "status": status}.get(name, filler[name]))
    return pa.table(data, schema=SCHEMA)


def _store(tmp_path, greedy: dict[str, bool], samples: dict[str, list[bool]]) -> SampleStore:
    store = SampleStore(tmp_path)
    store.write("greedy", _table([(q, 0, "correct" if ok else "incorrect") for q, ok in greedy.items()]))
    store.write("samples", _table([(q, i, "correct" if ok else "incorrect") for q, flags in samples.items() for i, ok in enumerate(flags)]))
    return store


# greedy: originals 1, 0, 1; instances t0 [1, 0], t1 [0, 0], t2 [1, 1]; t3 has one instance only
GREEDY = {
    ORIG.format(t="0000", o=473): True, ORIG.format(t="0001", o=103): False, ORIG.format(t="0002", o=184): True,
    INST.format(t="0000", o=473, j=0): True, INST.format(t="0000", o=473, j=1): False,
    INST.format(t="0001", o=103, j=0): False, INST.format(t="0001", o=103, j=1): False,
    INST.format(t="0002", o=184, j=0): True, INST.format(t="0002", o=184, j=1): True,
    INST.format(t="0003", o=740, j=0): True,
    "gsm8k/test/0": True,
}


def test_instance_sets_original_and_drop_are_exact(tmp_path):
    """Set j averages the j-th instances: [2/3, 1/3]; original over the same templates 2/3; drop =
    mean over templates of (original - instance mean) = (0.5 + 0 + 0) / 3; a template without all
    sets (0003) and non-GSM-Symbolic ids are left out."""
    samples = {q: [True, False] for q in GREEDY}
    store = _store(tmp_path, GREEDY, samples)
    scores = question_scores(store.read("samples", ["question_id", "sample_idx", "status"]), store.read("greedy", ["question_id", "status"]))
    result = compare(scores, "greedy")["gsm_symbolic"]
    assert result["num_templates"] == 3 and result["num_sets"] == 2
    assert result["sets"] == pytest.approx([2 / 3, 1 / 3])
    assert result["original"] == pytest.approx(2 / 3)
    assert result["drop"] == pytest.approx(1 / 6)
    assert result["templates_left_out"] == ["0003"]
    assert result["drop_ci95"][0] <= result["drop"] <= result["drop_ci95"][1]
    assert compare(scores, "pass@2")["gsm_symbolic"]["drop"] == pytest.approx(0.0)  # every question 1 of 2 correct


def test_write_report_files_and_nothing_without_originals(tmp_path):
    """write_report writes json/md/png for a run with originals and instances, and returns None (writing
    nothing) for a run with no originals."""
    _store(tmp_path / "a", GREEDY, {q: [True, False] for q in GREEDY})
    written = write_report(tmp_path / "a")
    report = json.loads((tmp_path / "a" / "symbolic_report.json").read_text())
    assert list(report) == ["greedy", "pass@1", "pass@2"]
    assert report["pass@1"]["gsm_symbolic"]["original"] == pytest.approx(0.5)
    assert "| greedy | gsm_symbolic | 3 | 2 | 66.7 | 50.0 |" in written["markdown"]
    assert (tmp_path / "a" / "symbolic_hist.png").stat().st_size > 0
    no_originals = {q: ok for q, ok in GREEDY.items() if not q.startswith("gsm_symbolic_original")}
    _store(tmp_path / "b", no_originals, {q: [True] for q in no_originals})
    assert write_report(tmp_path / "b") is None
    assert not (tmp_path / "b" / "symbolic_report.json").exists()


def test_pipeline_report_shows_the_gap_per_run(tmp_path):
    """A pipeline run whose base evaluation holds a GSM-Symbolic report gets the gap section, one row
    per (run, metric, variant) with the report's numbers; a run without one gets no such section."""
    import shutil
    from pathlib import Path

    from lib.pipeline_report import collect, render_markdown

    stored = Path(__file__).resolve().parents[1] / "data" / "pipeline_run"
    assert "GSM-Symbolic" not in render_markdown(collect(stored), {})
    run_dir = tmp_path / "run"
    shutil.copytree(stored, run_dir)
    _store(tmp_path / "eval", GREEDY, {q: [True, False] for q in GREEDY})
    write_report(tmp_path / "eval")
    shutil.copy(tmp_path / "eval" / "symbolic_report.json", run_dir / "base" / "symbolic_report.json")
    markdown = render_markdown(collect(run_dir), {})
    assert "## GSM-Symbolic: original vs perturbed questions" in markdown
    assert "| base | greedy | gsm_symbolic | 3 x 2 | 66.7 | 50.0 | 16.7 [" in markdown
    assert [line.split(" | ")[1] for line in markdown.splitlines() if line.startswith("| base | ") and "| gsm_symbolic |" in line] == [
        "greedy", "pass@1", "pass@2"]
