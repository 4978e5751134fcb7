"""metrics.json contents from stored verdicts: exact values, breakdowns, status counts, incomplete runs."""

import json

import pyarrow as pa
import pytest

from lib.data import Question
from lib.metrics_aggregate import IncompleteRunError, compute_metrics
from lib.report import plot_passk, summary_table, write_metrics_json


def table(rows):
    qid, idx, status, canonical = zip(*rows)
    return pa.table({"question_id": list(qid), "sample_idx": list(idx), "status": list(status), "canonical": list(canonical)})


QUESTIONS = [
    Question("a/0", "a", "?", "1", level="Level 1"),
    Question("a/1", "a", "?", "2", level="Level 2"),
    Question("b/0", "b", "?", "3"),
]
SAMPLES = table(
    [("a/0", i, s, c) for i, (s, c) in enumerate([("correct", "1"), ("incorrect", "7"), ("incorrect", "7"), ("no_answer", None)])]
    + [("a/1", i, s, c) for i, (s, c) in enumerate([("timeout", None), ("incorrect", "5"), ("correct", "2"), ("correct", "2")])]
    + [("b/0", i, s, c) for i, (s, c) in enumerate([("error", None), ("incorrect", "4"), ("incorrect", "4"), ("incorrect", "9")])]
    + [("b/0", 4, "correct", "3")]  # an index beyond samples_per_question (from a larger earlier run): ignored
)
GREEDY = table([("a/0", 0, "correct", "1"), ("a/1", 0, "incorrect", "5"), ("b/0", 0, "no_answer", None)])


def test_exact_values_per_dataset_and_level():
    """a: c=1 and c=2 of 4 -> PassRatio 3/8, pass@2 = (1/2 + 5/6)/2; maj@4: a/0 loses 1-2, a/1 wins 2-1."""
    m = compute_metrics(QUESTIONS, SAMPLES, GREEDY, 4)
    a = m["a"]
    assert a["num_questions"] == 2 and a["samples_per_question"] == 4
    assert a["pass_ratio"] == pytest.approx(3 / 8)
    assert a["pass@k"]["1"] == pytest.approx(3 / 8)
    assert a["pass@k"]["2"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert a["pass@k"]["4"] == 1.0
    assert a["maj@k"]["4"] == pytest.approx(0.5)
    assert a["greedy_pass@1"] == 0.5
    assert a["status_counts"] == {"correct": 3, "incorrect": 3, "no_answer": 1, "timeout": 1, "error": 0, "ungraded": 0}
    assert m["b"]["status_counts"] == {"correct": 0, "incorrect": 3, "no_answer": 0, "timeout": 0, "error": 1, "ungraded": 0}
    assert m["b"]["pass@k"]["4"] == 0.0 and m["b"]["greedy_pass@1"] == 0.0
    assert m["b"]["greedy_status_counts"]["no_answer"] == 1
    assert m["a/level=Level 2"]["pass_ratio"] == pytest.approx(0.5)
    assert set(m) == {"a", "b", "a/level=Level 1", "a/level=Level 2"}


def test_incomplete_run_is_an_error_not_a_number():
    """A question with fewer samples than asked for stops the report and says how to resume."""
    with pytest.raises(IncompleteRunError, match="rerun the job to resume"):
        compute_metrics(QUESTIONS, SAMPLES, GREEDY, 5)


def test_outputs_written(tmp_path):
    """metrics.json is keyed by dataset and records the grader; the plot and table render."""
    m = compute_metrics(QUESTIONS, SAMPLES, GREEDY, 4)
    write_metrics_json(tmp_path / "metrics.json", m, {"grader_version": "g"})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["a"]["grader"] == {"grader_version": "g"} and saved["a"]["pass@k"]["4"] == 1.0
    assert saved["a"]["pass@every_k"] == pytest.approx([saved["a"]["pass@k"][k] for k in ("1", "2")] + [(3 / 4 + 1) / 2, 1.0])
    plot_passk(tmp_path / "passk.png", m)
    assert (tmp_path / "passk.png").read_bytes()[:4] == b"\x89PNG"
    assert "| a | 2 | 4 | 50.0 [" in summary_table(m)


# ------------------------------------------------------------------------- select@k per rule (issue 15)

BAD, GOOD, PLAIN = "so 2 + 2 = 5", "since 3 + 4 = 7", "no written arithmetic"
SELECT_QUESTIONS = [Question("s/0", "s", "?", "7"), Question("s/1", "s", "?", "3")]
SELECT_SAMPLES = pa.table({
    "question_id": ["s/0"] * 4 + ["s/1"] * 4,
    "sample_idx": [0, 1, 2, 3] * 2,
    "status": ["incorrect", "incorrect", "correct", "incorrect"] + ["correct"] * 4,
    "canonical": ["5", "5", "7", "9"] + ["3"] * 4,
    "text": [BAD, BAD, GOOD, BAD] + [PLAIN] * 4,
})


def test_select_at_k_per_rule_exact_values_on_a_stored_table():
    """s/0: "5","5" (2+2=5), "7" (3+4=7, correct), "9" (2+2=5). majority: k=2 ties 5-7 in the 3 pairs holding
    "7" -> 1.5/6, k=4 "5" wins -> 0. arithmetic_checked: only "7" keeps its vote -> k=2 3/6, k=4 1. s/1 is
    all correct (1 everywhere). Dataset values are the means; CIs under select@<rule>@k."""
    m = compute_metrics(SELECT_QUESTIONS, SELECT_SAMPLES, None, 4, selection=["majority", "arithmetic_checked"])
    s = m["s"]
    assert s["select@k"]["majority"] == pytest.approx({"1": 0.625, "2": 0.625, "4": 0.5})
    assert s["select@k"]["arithmetic_checked"] == pytest.approx({"1": 0.625, "2": 0.75, "4": 1.0})
    assert s["select@k"]["majority"] == pytest.approx(s["maj@k"])  # maj@k is select@k of majority
    assert {f"select@{r}@{k}" for r in ("majority", "arithmetic_checked") for k in (1, 2, 4)} <= set(s["ci95"])
    assert s["ci95"]["select@arithmetic_checked@4"] == [1.0, 1.0]
    assert "select@k" not in compute_metrics(SELECT_QUESTIONS, SELECT_SAMPLES, None, 4)["s"]


def test_texts_from_a_loader_a_chunk_at_a_time_give_the_same_select_at_k(tmp_path, monkeypatch):
    """The evaluate job's path: no text column in the samples table; compute_metrics asks the store for
    TEXT_CHUNK questions' texts at a time (here 1: two calls of one question each) and gets the values of
    the test above, from the rows stored as Parquet parts."""
    import lib.metrics_aggregate as aggregate_module

    from lib.sample_store import SCHEMA, SampleStore

    store = SampleStore(tmp_path)
    for qid in ("s/1", "s/0"):  # one part per question
        part = SELECT_SAMPLES.filter(pa.compute.equal(SELECT_SAMPLES["question_id"], qid))
        n = part.num_rows
        rest = {"dataset": ["s"] * n, "num_tokens": [1] * n, "finish_reason": ["stop"] * n, "extracted": part["canonical"],
                "extraction_method": ["boxed"] * n, "error": [None] * n, "gold": ["7"] * n}
        store.write("samples", pa.table({c: part[c] if c in part.column_names else rest[c] for c in SCHEMA.names}, schema=SCHEMA))
    monkeypatch.setattr(aggregate_module, "TEXT_CHUNK", 1)
    calls = []

    def texts(ids):
        calls.append(list(ids))
        return store.read_questions("samples", ids, ["question_id", "sample_idx", "text"])

    samples = store.read("samples", ["question_id", "sample_idx", "status", "canonical"])
    m = compute_metrics(SELECT_QUESTIONS, samples, None, 4, selection=["majority", "arithmetic_checked"], texts=texts)
    assert calls == [["s/0"], ["s/1"]]
    assert m["s"]["select@k"]["arithmetic_checked"] == pytest.approx({"1": 0.625, "2": 0.75, "4": 1.0})
    assert m == compute_metrics(SELECT_QUESTIONS, SELECT_SAMPLES, None, 4, selection=["majority", "arithmetic_checked"])


def test_select_at_k_reaches_metrics_json_summary_and_plot(tmp_path):
    """metrics.json carries select@k per rule; summary.md has one select@k row per (dataset, rule); the plot renders."""
    from lib.report import write_summary_md

    m = compute_metrics(SELECT_QUESTIONS, SELECT_SAMPLES, None, 4, selection=["arithmetic_checked"])
    write_metrics_json(tmp_path / "metrics.json", m, {})
    assert json.loads((tmp_path / "metrics.json").read_text())["s"]["select@k"] == {"arithmetic_checked": {"1": 0.625, "2": 0.75, "4": 1.0}}
    text = write_summary_md(tmp_path / "summary.md", m, "# t")
    assert "## select@k" in text and "| s | arithmetic_checked | 62.5 [" in text and "| 75.0 [" in text
    plot_passk(tmp_path / "passk.png", m)
    assert (tmp_path / "passk.png").read_bytes()[:4] == b"\x89PNG"


def test_selection_rules_needing_scores_or_texts_are_refused_before_work():
    """A rule needing verifier scores (no score source in the job), an unknown rule, and a text rule on a table
    without texts are errors naming the rule, not silent zeros."""
    from lib.metrics_aggregate import check_selection

    with pytest.raises(ValueError, match="'verifier_weighted' needs per-sample verifier/judge scores"):
        check_selection(["majority", "verifier_weighted"])
    with pytest.raises(ValueError, match="unknown selection rule 'best'"):
        check_selection(["best"])
    with pytest.raises(ValueError, match="need the samples' text column"):
        compute_metrics(SELECT_QUESTIONS, SELECT_SAMPLES.drop(["text"]), None, 4, selection=["arithmetic_checked"])


# ------------------------------------------------------------------------- datasets without gold (issue 15)


def test_a_dataset_without_gold_answers_is_reported_as_ungraded_and_never_fails_the_run(tmp_path):
    """h (no gold, like hungarian_exam): status counts only, graded false, no pass@k; its own summary.md section;
    its samples (one in status error) are outside max_error_fraction's count; dataset a is unchanged."""
    from lib.metrics_aggregate import graded_error_fraction
    from lib.report import write_summary_md

    questions = QUESTIONS[:2] + [Question("h/0", "h", "?", ""), Question("h/1", "h", "?", "")]
    samples = pa.concat_tables([SAMPLES.filter(pa.compute.field("question_id").isin(["a/0", "a/1"])), table(
        [("h/0", i, s, c) for i, (s, c) in enumerate([("ungraded", "4"), ("ungraded", "4"), ("no_answer", None), ("error", None)])]
        + [("h/1", i, "ungraded", "x") for i in range(4)])])
    m = compute_metrics(questions, samples, None, 4)
    assert m["h"] == {"graded": False, "num_questions": 2, "samples_per_question": 4,
                      "status_counts": {"correct": 0, "incorrect": 0, "no_answer": 1, "timeout": 0, "error": 1, "ungraded": 6},
                      "greedy_status_counts": {s: 0 for s in ("correct", "incorrect", "no_answer", "timeout", "error", "ungraded")}}
    assert m["a"]["pass@k"]["4"] == 1.0 and m["a"]["maj@k"]["4"] == pytest.approx(0.5)
    assert graded_error_fraction(m) == (0, 8)
    text = write_summary_md(tmp_path / "summary.md", m, "# t")
    assert "| h | 2 | 4 | 6 | 1 | 0 | 1 |" in text.split("## Ungraded datasets", 1)[1]
    assert "| h |" not in text.split("## Ungraded datasets", 1)[0]
    plot_passk(tmp_path / "passk.png", m)
