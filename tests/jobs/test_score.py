"""issue 15, the score job end to end (slow: Ray Data): judge a small stored evaluation through the loopback fake
teacher, record failed requests, resume without repeating a request, then measure select@k of verifier_weighted
from the stored samples and scores with the evaluation job's metrics stage."""

import json

import pyarrow as pa
import pytest

from jobs import score
from jobs.evaluate import EvaluateConfig
from jobs.evaluate import main as evaluate_main
from lib.data import evaluation_questions
from lib.config import dump_config
from lib.sample_store import SCHEMA, SampleStore
from lib.scoring import ScoreStore
from tests.fake_teacher import FakeTeacher

N = 4
MARK = "ZZOK"  # in the correct samples' text; the fake judge scores those 0.9, the others 0.3


def judge(messages, seed):
    return f"Checked.\nScore: {0.9 if MARK in messages[-1]['content'] else 0.3}"


def stored_evaluation(root):
    """2 GSM8K questions x 4 samples: three agree on a wrong answer, sample 3 is correct (majority fails)."""
    config = EvaluateConfig(datasets=["gsm8k"], limit=2, samples_per_question=N, greedy=False, output_dir=str(root),
                            selection=["majority"])
    questions = evaluation_questions(config.datasets, config.limit, config.data_dir)
    rows = []
    for q in questions:
        wrong = str(int(float(q.answer)) + 1)
        for i in range(N):
            ok = i == 3
            answer = q.answer if ok else wrong
            rows.append({**{c: None for c in SCHEMA.names}, "question_id": q.id, "dataset": q.dataset, "sample_idx": i,
                         "text": f"Working {MARK if ok else ''}. \\boxed{{{answer}}}", "num_tokens": 9,
                         "finish_reason": "stop", "extracted": answer, "extraction_method": "boxed", "canonical": answer,
                         "status": "correct" if ok else "incorrect", "gold": q.answer})
    store = SampleStore(root)
    store.write("samples", pa.Table.from_pylist(rows, schema=SCHEMA))
    store.record_questions(questions)
    dump_config(config, root / "config.yaml")
    return questions


@pytest.mark.slow
def test_score_job_resumes_without_repeating_a_request_and_feeds_select_at_k(tmp_path, ray_cluster):
    """Failed judge requests are stored and counted; a rerun sends only those; a rerun after losing the parts
    sends nothing (cache); then metrics.json carries select@k of verifier_weighted (1.0 at k=4, majority 0.0)."""
    questions = stored_evaluation(tmp_path)
    second = questions[1].id
    failing = {"on": True}

    def fault(n, body):  # the judge refuses (400, not retried) every request about the second question
        return "400" if failing["on"] and questions[1].question in body["messages"][-1]["content"] else None

    with FakeTeacher(responder=judge, fault_fn=fault) as teacher:
        argv = [f"output_dir={tmp_path}", f"judge.base_url={teacher.base_url}", "judge.model=fake-teacher",
                "resources.rows_per_batch=3"]
        # run 1: 4 failed requests are recorded and counted; the job fails above max_error_fraction
        with pytest.raises(RuntimeError, match="4 of 8 samples have no judge score"):
            score.main(argv)
        assert len(teacher.log) == 8
        counts = ScoreStore(tmp_path).status_counts()
        assert counts["scored"] == 4 and counts["failed"] == 4
        failed = {r["question_id"] for r in ScoreStore(tmp_path).read().to_pylist() if r["status"] == "failed"}
        assert failed == {second}

        # run 2: only the 4 failed samples are sent again
        failing["on"] = False
        summary = score.main(argv)
        assert (summary.judged_this_run, summary.requests_sent, summary.cached) == (4, 4, 0)
        assert len(teacher.log) == 12 and summary.status_counts["scored"] == 8

        # a run killed after its responses arrived but before its parts were written: the parts are gone, the
        # cache is not; the rerun judges all 8 samples again and sends no request
        for part in ScoreStore(tmp_path).parts():
            part.unlink()
        summary = score.main(argv)
        assert (summary.judged_this_run, summary.requests_sent, summary.cached) == (8, 0, 8)
        assert len(teacher.log) == 12

        # nothing left to judge: no request, not even the preflight's
        summary = score.main(argv)
        assert summary.judged_this_run == 0 and len(teacher.log) == 12
    assert json.loads((tmp_path / "scores" / "summary.json").read_text())["status_counts"]["scored"] == 8

    metrics = evaluate_main([f"output_dir={tmp_path}", "datasets=[gsm8k]", "limit=2", f"samples_per_question={N}",
                                    "greedy=false", "stage=metrics", "selection=[majority,verifier_weighted]"]).metrics
    select = metrics["gsm8k"]["select@k"]
    assert select["verifier_weighted"] == pytest.approx({"1": 0.25, "2": 0.5, "4": 1.0})
    assert select["majority"]["4"] == 0.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["gsm8k"]["select@k"]["verifier_weighted"]["4"] == 1.0
    assert "verifier_weighted" in (tmp_path / "summary.md").read_text()


def test_score_job_refuses_a_directory_without_samples_and_two_judges_before_work(tmp_path):
    """Bad input stops the job before any request: no stored evaluation, or both local_server and judge.base_url."""
    from lib.config import ConfigError

    with pytest.raises(ConfigError, match="holds no evaluation samples"):
        score.main([f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="either local_server .* or judge.base_url"):
        score.main([f"output_dir={tmp_path}", "local_server.model=default", "judge.base_url=http://127.0.0.1:1/v1"])
    assert not (tmp_path / "scores").exists()
