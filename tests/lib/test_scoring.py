"""lib.scoring: the judge's score parsing, the scores/ layout beside samples/, resume, and select@k of the
score rules from stored scores (issue 15). Fast: the judge stage is called directly against the loopback
fake teacher, without Ray."""

import asyncio

import pyarrow as pa
import pytest

from lib.config import ConfigError
from lib.data import Question
from lib.report import compute_metrics
from lib.scoring import (SCORES_DIR, JudgeAndStore, ScoreStore, check_score_source, judge_messages, parse_score,
                         pending_rows, score_lists)
from lib.teacher import TeacherSettings
from tests.fake_teacher import FakeTeacher


def _row(qid, idx, status, score=None):
    return {"question_id": qid, "sample_idx": idx, "score": score, "status": status, "judge_text": None, "error": None,
            "judge_model": "m", "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "cached": False, "attempts": 1}


@pytest.mark.parametrize("text, expected", [
    ("The steps check out.\nScore: 0.9", 0.9),
    ("score = 1", 1.0),
    ("**Score:** 0", 0.0),
    ("Score: .25", 0.25),
    ("First guess Score: 0.2, on reflection Score: 0.7", 0.7),  # the last one counts
    ("Score: 7", None),  # out of [0, 1]
    ("Score: 1.5", None),
    ("I think it is right.", None),
    ("", None),
    (None, None),
])
def test_parse_score_reads_the_last_score_in_unit_range(text, expected):
    """A judge reply yields its last 'Score: X' when 0 <= X <= 1, else None (never raises)."""
    assert parse_score(text) == expected


def test_judge_messages_show_question_and_response_but_no_gold():
    """The judge sees the question and the sample, one user message."""
    messages = judge_messages("What is 2+3?", "2+3=5, so \\boxed{5}")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert "What is 2+3?" in messages[0]["content"] and "\\boxed{5}" in messages[0]["content"]
    assert "Score: X" in messages[0]["content"]


def test_store_prefers_a_done_row_over_a_failed_one_and_lists_done_pairs(tmp_path):
    """A failed row followed by a scored row for the same pair reads as the scored row; failed pairs are not done."""
    store = ScoreStore(tmp_path)
    store.write([_row("q", 0, "failed"), _row("q", 1, "scored", 0.5), _row("q", 2, "no_answer")])
    store.write([_row("q", 0, "scored", 0.8), _row("r", 0, "budget")])
    (store.directory / "part-x.tmp").write_text("partial")
    assert store.clean() == 1
    table = store.read()
    assert table.num_rows == 4
    by_pair = {(r["question_id"], r["sample_idx"]): (r["status"], r["score"]) for r in table.to_pylist()}
    assert by_pair == {("q", 0): ("scored", 0.8), ("q", 1): ("scored", 0.5), ("q", 2): ("no_answer", None),
                       ("r", 0): ("budget", None)}
    assert store.done() == {("q", 0), ("q", 1), ("q", 2)}
    assert store.status_counts() == {"scored": 2, "unparsed": 0, "no_answer": 1, "failed": 0, "budget": 1}
    assert store.directory == tmp_path / SCORES_DIR


def test_pending_rows_skip_done_pairs_and_indices_beyond_n():
    """Only stored samples without a done score and with sample_idx < n are judged, with their question text."""
    samples = pa.table({"question_id": ["q", "q", "q", "r"], "sample_idx": [0, 1, 2, 0], "text": ["a", "b", "c", "d"],
                        "extracted": ["1", "2", None, "4"]})
    rows = pending_rows(samples, {"q": "Q?", "r": "R?"}, {("q", 0)}, samples_per_question=2)
    assert [(r["question_id"], r["sample_idx"], r["question"], r["text"]) for r in rows] == [("q", 1, "Q?", "b"), ("r", 0, "R?", "d")]


def _judge(messages, seed):
    return "Checked.\nScore: 0.9" if "\\boxed{5}" in messages[-1]["content"] else "Checked.\nScore: 0.1"


def test_judge_stage_records_failures_and_a_rerun_sends_only_those(tmp_path):
    """The stage writes one row per sample: scored, no_answer (no request) and failed (error kept, counted);
    a rerun over the pending rows sends exactly the failed requests again; a third run sends nothing."""
    samples = pa.table({"question_id": ["q"] * 4, "sample_idx": [0, 1, 2, 3],
                        "text": ["so \\boxed{5}", "so \\boxed{6}", "no answer", "so \\boxed{5} FAILME"],
                        "extracted": ["5", "6", None, "5"]})
    failing = {"on": True}
    fault = lambda n, body: "400" if failing["on"] and "FAILME" in body["messages"][-1]["content"] else None  # noqa: E731

    def run(teacher) -> dict:
        store = ScoreStore(tmp_path)
        rows = pending_rows(samples, {"q": "What is 2+3?"}, store.done())
        if not rows:
            return {"num_rows": [0]}
        batch = {c: [r[c] for r in rows] for c in rows[0]}
        stage = JudgeAndStore(TeacherSettings(base_url=teacher.base_url, model="fake-teacher", max_attempts=1).model_dump(),
                              str(tmp_path), str(tmp_path / SCORES_DIR / "cache.sqlite"))
        return asyncio.run(stage(batch))

    with FakeTeacher(responder=_judge, fault_fn=fault) as teacher:
        first = run(teacher)
        assert first["num_rows"] == [4] and first["scored"] == [2] and first["no_answer"] == [1] and first["failed"] == [1]
        assert len(teacher.log) == 3  # no request for the sample without an answer
        failing["on"] = False
        second = run(teacher)
        assert second["num_rows"] == [1] and second["scored"] == [1] and second["failed"] == [0]
        assert len(teacher.log) == 4
        assert run(teacher)["num_rows"] == [0] and len(teacher.log) == 4
    table = ScoreStore(tmp_path).read()
    assert {r["sample_idx"]: (r["status"], r["score"]) for r in table.to_pylist()} == {
        0: ("scored", 0.9), 1: ("scored", 0.1), 2: ("no_answer", None), 3: ("scored", 0.9)}
    assert score_lists(tmp_path, ["q"], 4) == {"q": [0.9, 0.1, None, 0.9]}


def test_score_lists_refuse_samples_without_a_score_row(tmp_path):
    """select@k of a score rule never measures unjudged samples as 0: a missing pair is an error naming jobs.score."""
    ScoreStore(tmp_path).write([_row("q", 0, "scored", 0.3)])
    with pytest.raises(ValueError, match="1 of 2 samples .* no judge score .*jobs.score"):
        score_lists(tmp_path, ["q"], 2)


def test_score_rules_without_a_scores_dir_are_refused_naming_selection(tmp_path):
    """Before work: a score rule with no scores/ is a ConfigError naming `selection`; other rules pass."""
    check_score_source(["majority", "arithmetic_checked"], tmp_path)
    with pytest.raises(ConfigError, match="selection: \\['verifier_weighted'\\]"):
        check_score_source(["majority", "verifier_weighted"], tmp_path)
    ScoreStore(tmp_path).write([_row("q", 0, "scored", 0.3)])
    check_score_source(["verifier_weighted"], tmp_path)


def test_select_at_k_of_verifier_weighted_from_stored_scores_is_exact():
    """One question, samples [5 (correct, score 0.9), 6 (0.1), 6 (0.1)]: verifier_weighted picks the correct
    minority (select@1 = 1/3, @2 = 2/3, @3 = 1) where majority does not (maj@3 = 0); judge_top_groups agrees."""
    questions = [Question(id="q", dataset="d", question="What is 2+3?", answer="5")]
    samples = pa.table({"question_id": ["q"] * 3, "sample_idx": [0, 1, 2], "status": ["correct", "incorrect", "incorrect"],
                        "canonical": ["5", "6", "6"]})
    m = compute_metrics(questions, samples, None, 3, selection=["majority", "verifier_weighted", "judge_top_groups"],
                        scores={"q": [0.9, 0.1, 0.1]})["d"]
    assert m["select@k"]["verifier_weighted"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "3": 1.0})
    assert m["select@k"]["judge_top_groups"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "3": 1.0})
    assert m["select@k"]["majority"]["3"] == 0.0
    with pytest.raises(ValueError, match="needs per-sample verifier/judge scores"):
        compute_metrics(questions, samples, None, 3, selection=["verifier_weighted"])
