"""issue 15, stop_at_first_correct: the evaluation job's adaptive rounds (driven with a fake sampler that stores
scripted verdicts: no Ray, no engine) and the adaptive metrics on stored rows."""

import pyarrow as pa
import pytest

from jobs.evaluate import EvaluateConfig, run_adaptive_sampling
from lib.data import Question
from lib.metrics import adaptive_num_drawn
from lib.report import IncompleteRunError, compute_adaptive_metrics, summary_table, write_summary_md
from lib.sample_store import SCHEMA, SampleStore, plan_requests

N, CHUNK = 8, 2
# scripted verdict stream per question (sample_idx order): first correct at 1, at 5, never, at 0
STREAMS = {"d/0": "xcxxxxxx", "d/1": "xxxxxcxx", "d/2": "xxxxxxxx", "d/3": "cxxxxxxx"}
QUESTIONS = [Question(qid, "d", "?", "1") for qid in STREAMS]


def rows(pairs, streams=STREAMS):
    """Sample rows (question_id, sample_idx) with their scripted statuses, in SCHEMA."""
    status = ["correct" if streams[q][i] == "c" else "incorrect" for q, i in pairs]
    cols = {name: [None] * len(pairs) for name in SCHEMA.names}
    cols.update(question_id=[q for q, _ in pairs], dataset=["d"] * len(pairs), sample_idx=[i for _, i in pairs],
                text=[""] * len(pairs), num_tokens=[1] * len(pairs), finish_reason=["stop"] * len(pairs), status=status,
                canonical=["1" if s == "correct" else "2" for s in status], gold=["1"] * len(pairs))
    return pa.table(cols, schema=SCHEMA)


def test_adaptive_rounds_stop_each_question_after_the_chunk_holding_its_first_correct_sample(tmp_path):
    """Rounds of 2 samples: d/3 stops after round 1, d/0 too (first at 1), d/1 after round 3 (first at 5), d/2
    draws all 8. Stored rows per question equal adaptive_num_drawn; 4 rounds, each for the unsolved questions."""
    config = EvaluateConfig(samples_per_question=N, stop_at_first_correct=True, greedy=False,
                            resources={"samples_per_request": CHUNK}, output_dir=str(tmp_path))
    store, rounds = SampleStore(tmp_path), []

    def fake_sample(config, questions, output_dir, samples_per_question):
        rounds.append(([q.id for q in questions], samples_per_question))
        for r in plan_requests(questions, store.existing("samples"), {}, samples_per_question=samples_per_question,
                               samples_per_request=CHUNK, greedy=False):
            store.write("samples", rows([(r["question_id"], i) for i in r["sample_indices"]]))

    run_adaptive_sampling(config, QUESTIONS, tmp_path, sample=fake_sample)
    assert rounds == [(list(STREAMS), 2), (["d/1", "d/2"], 4), (["d/1", "d/2"], 6), (["d/2"], 8)]
    stored = store.read("samples", ["question_id", "sample_idx"]).column("question_id").to_pylist()
    firsts = {q: s.find("c") if "c" in s else None for q, s in STREAMS.items()}
    assert {q: stored.count(q) for q in STREAMS} == {q: adaptive_num_drawn(f, N, CHUNK) for q, f in firsts.items()}
    assert [stored.count(q) for q in STREAMS] == [2, 6, 8, 2]
    # a resumed run (all stored) samples nothing more
    rounds.clear()
    run_adaptive_sampling(config, QUESTIONS, tmp_path, sample=fake_sample)
    assert rounds == [(["d/2"], 2), (["d/2"], 4), (["d/2"], 6), (["d/2"], 8)]
    assert store.read("samples", ["question_id"]).num_rows == 18

    m = compute_adaptive_metrics(QUESTIONS, store.read("samples", ["question_id", "sample_idx", "status", "canonical"]), None, N)["d"]
    # first successes 1, 5, None, 0: pass@1 = 1/4, pass@2..5 = 2/4, pass@6..8 = 3/4
    assert m["pass@every_k"] == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75])
    assert m["pass@k"] == pytest.approx({"1": 0.25, "2": 0.5, "4": 0.5, "8": 0.75})
    assert (m["samples_drawn"], m["samples_full"], m["maj@k"], m["pass_ratio"]) == (18, 32, None, None)
    assert set(m["ci95"]) == {"pass@1", "pass@2", "pass@4", "pass@8"}
    text = write_summary_md(tmp_path / "summary.md", {"d": m}, "# t")
    assert "| d | 18 | 32 | 56.2% |" in text and "maj@k\n\n(not available" in text
    assert "| n/a | n/a |" in summary_table({"d": m})


def test_adaptive_metrics_refuse_a_question_without_success_and_without_all_samples():
    """d/2 (never correct) with 6 of 8 samples; or d/0 with a gap before its correct sample (indices 0 and 2
    stored, 1 missing: its contiguous prefix holds no success): the run must be resumed, not reported."""
    done = [("d/0", 0), ("d/0", 1), *[("d/1", i) for i in range(6)], ("d/3", 0)]
    with pytest.raises(IncompleteRunError, match=r"1 of 4 questions have no correct sample and fewer than 8 samples \(first: d/2\)"):
        compute_adaptive_metrics(QUESTIONS, rows(done + [("d/2", i) for i in range(6)]), None, N)
    gap = rows([("d/0", 0), ("d/0", 2)] + done[2:] + [("d/2", i) for i in range(8)],
               dict(STREAMS, **{"d/0": "xxcxxxxx"}))
    with pytest.raises(IncompleteRunError, match="first: d/0"):
        compute_adaptive_metrics(QUESTIONS, gap, None, N)
