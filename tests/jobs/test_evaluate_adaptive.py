"""issue 15, stop_at_first_correct: the adaptive schedule (driven without Ray: scripted verdicts stored as rows),
the metrics on the stored rows, and the job's driver over Ray actors with a scripted sampler (no engine)."""

import pyarrow as pa
import pytest

from jobs.evaluate import EvaluateConfig, run_adaptive_sampling
from lib.adaptive_schedule import STORED_COLUMNS, AdaptiveSchedule
from lib.data import Question
from lib.metrics import adaptive_num_drawn
from lib.report import IncompleteRunError, compute_adaptive_metrics, summary_table, write_summary_md
from lib.sample_store import SCHEMA, SampleStore
from tests.fake_sampler import ScriptedSampler, logged_requests

N, CHUNK = 8, 2
# scripted verdict stream per question (sample_idx order): first correct at 1, at 5, never, at 0
STREAMS = {"d/0": "xcxxxxxx", "d/1": "xxxxxcxx", "d/2": "xxxxxxxx", "d/3": "cxxxxxxx"}
QUESTIONS = [Question(qid, "d", "?", "1") for qid in STREAMS]


def rows(pairs, streams=STREAMS):
    """Sample rows (question_id, sample_idx) with their scripted statuses, in SCHEMA."""
    status = [{"c": "correct", "e": "error"}.get(streams[q][i], "incorrect") for q, i in pairs]
    cols = {name: [None] * len(pairs) for name in SCHEMA.names}
    cols.update(question_id=[q for q, _ in pairs], dataset=["d"] * len(pairs), sample_idx=[i for _, i in pairs],
                text=[""] * len(pairs), num_tokens=[1] * len(pairs), status=status,
                finish_reason=["error" if s == "error" else "stop" for s in status],
                canonical=["1" if s == "correct" else "2" for s in status], gold=["1"] * len(pairs))
    return pa.table(cols, schema=SCHEMA)


def drive(schedule, store, streams=STREAMS):
    """Run ``schedule`` to the end without Ray: each request's rows are stored with their scripted verdicts
    (``e``: an engine-error row) and summarised as GradeAndStore does. Returns question_id -> its requests'
    sample indices, in order."""
    drawn, queue = {}, list(schedule.start())
    while queue:
        r = queue.pop(0)
        qid, indices = r["question_id"], r["sample_indices"]
        drawn.setdefault(qid, []).append(indices)
        table = rows([(qid, i) for i in indices], streams)
        store.write("samples", table)
        errors = [streams[qid][i] == "e" for i in indices]
        queue += schedule.graded({"question_id": [qid], "kind": ["samples"], "num_samples": [len(indices)],
                                  "num_tokens": [len(indices)], "num_correct": [table.column("status").to_pylist().count("correct")],
                                  "num_errors": [sum(errors)]})
    assert schedule.done()
    return drawn


def schedule_for(store, n=N, chunk=CHUNK):
    return AdaptiveSchedule(QUESTIONS, store.read("samples", list(STORED_COLUMNS)), store.existing("greedy"),
                            samples_per_question=n, samples_per_request=chunk, greedy=False,
                            stored_indices=lambda qid: store.existing("samples").get(qid, set()))


def test_adaptive_schedule_stops_each_question_after_the_round_holding_its_first_correct_sample(tmp_path):
    """Rounds of 2 samples: d/3 stops after round 1, d/0 too (first at 1), d/1 after round 3 (first at 5), d/2
    draws all 8. Stored rows per question equal adaptive_num_drawn; a rerun on the stored rows draws nothing."""
    store = SampleStore(tmp_path)
    drawn = drive(schedule_for(store), store)
    assert drawn == {"d/0": [[0, 1]], "d/1": [[0, 1], [2, 3], [4, 5]], "d/2": [[0, 1], [2, 3], [4, 5], [6, 7]], "d/3": [[0, 1]]}
    stored = store.read("samples", ["question_id", "sample_idx"]).column("question_id").to_pylist()
    firsts = {q: s.find("c") if "c" in s else None for q, s in STREAMS.items()}
    assert {q: stored.count(q) for q in STREAMS} == {q: adaptive_num_drawn(f, N, CHUNK) for q, f in firsts.items()}
    assert [stored.count(q) for q in STREAMS] == [2, 6, 8, 2]
    assert drive(schedule_for(store), store) == {}  # resumed with everything stored: nothing more
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


def test_adaptive_schedule_retries_engine_errors_and_resumes_from_the_stored_rows(tmp_path):
    """As plan_requests' rounds: d/2's engine-error row (sample 2, always failing) is asked again with each later
    round's chunk. Resume from a killed run's rows: d/3 (correct stored) draws nothing, d/1 continues at 4, d/2
    at 7, and d/0's stored correct sample 1 behind a gap counts once the gap (0) is drawn."""
    streams = dict(STREAMS, **{"d/2": "xxexxxxx"})
    store = SampleStore(tmp_path / "errors")
    assert drive(schedule_for(store), store, streams)["d/2"] == [[0, 1], [2, 3], [2, 4], [5], [2, 6], [7]]
    assert store.existing("samples")["d/2"] == {0, 1, 3, 4, 5, 6, 7}

    store = SampleStore(tmp_path / "resume")
    store.write("samples", rows([("d/0", 1), ("d/3", 0), *[("d/1", i) for i in range(4)], *[("d/2", i) for i in range(7)]]))
    assert drive(schedule_for(store), store) == {"d/0": [[0]], "d/1": [[4, 5]], "d/2": [[7]]}
    assert [store.read("samples", ["question_id"]).column(0).to_pylist().count(q) for q in STREAMS] == [2, 6, 8, 1]


def adaptive_config(tmp_path, streams, **resources):
    """Two scripted engines, one grader, batches of at most 2 requests, 2 in flight per engine."""
    log_dir = tmp_path / f"engines-{len(list(tmp_path.glob('engines-*')))}"
    log_dir.mkdir()
    config = EvaluateConfig(samples_per_question=N, stop_at_first_correct=True, greedy=True, output_dir=str(tmp_path / "out"),
                            engine={"extra": {"streams": streams, "log_dir": str(log_dir)}},
                            resources={"samples_per_request": CHUNK, "num_engines": 2, "cpus_per_engine": 0, "num_graders": 1,
                                       "cpus_per_grader": 0, "requests_per_batch": 2, "batches_in_flight_per_engine": 2,
                                       **resources})
    return config, log_dir


def sample_requests(log_dir):
    drawn = {}
    for r in logged_requests(log_dir):
        if r["kind"] == "samples":
            drawn.setdefault(r["question_id"], []).append(r["sample_indices"])
    return {q: sorted(v) for q, v in sorted(drawn.items())}


@pytest.mark.slow
def test_adaptive_job_starts_each_engine_once_and_draws_each_question_until_its_first_correct_round(ray_cluster, tmp_path):
    """The driver over Ray actors: 2 engines constructed once each for the whole run; each question's rounds as the
    schedule says (d/1 resumes at 4 from a killed run's rows, d/2 retries its engine-error sample 2); exact stored
    rows per question; one greedy row each. A rerun starts the engines again only to retry d/2's error row."""
    streams = dict(STREAMS, **{"d/2": "xxexxxxx"})
    config, log_dir = adaptive_config(tmp_path, streams)
    out = tmp_path / "out"
    store = SampleStore(out)
    store.write("samples", rows([("d/1", i) for i in range(4)], streams))
    (store.directory("samples") / "part-killed.tmp").write_text("partial")  # what a kill mid-write leaves
    run_adaptive_sampling(config, QUESTIONS, out, sampler_cls=ScriptedSampler)
    assert len(list(log_dir.glob("engine-*"))) == 2
    assert sample_requests(log_dir) == {"d/0": [[0, 1]], "d/1": [[4, 5]], "d/2": [[0, 1], [2, 3], [2, 4], [2, 6], [5], [7]],
                                        "d/3": [[0, 1]]}
    assert sorted(r["question_id"] for r in logged_requests(log_dir) if r["kind"] == "greedy") == list(STREAMS)
    stored = store.read("samples", ["question_id", "status"]).to_pylist()
    assert [sum(r["question_id"] == q for r in stored) for q in STREAMS] == [2, 6, 8, 2]
    assert sum(r["status"] == "correct" for r in stored) == 3 and sum(r["status"] == "error" for r in stored) == 1
    assert store.read("greedy", ["status"]).column(0).to_pylist() == ["correct"] * 4
    assert not list(store.directory("samples").glob("*.tmp"))

    config, log_dir = adaptive_config(tmp_path, streams)
    run_adaptive_sampling(config, QUESTIONS, out, sampler_cls=ScriptedSampler)
    assert len(list(log_dir.glob("engine-*"))) == 2
    assert sample_requests(log_dir) == {"d/2": [[2], [2], [2]]}  # the rounds below 4, 6, 8 each ask for sample 2 again
    assert store.read("samples", ["question_id"]).num_rows == 18


@pytest.mark.slow
def test_adaptive_job_fails_when_a_sampler_call_raises_and_a_rerun_resumes(ray_cluster, tmp_path):
    """A sampler call that raises fails the job (as Ray Data does), naming the batch's question; a rerun with a
    working sampler draws only what is missing."""
    config, _ = adaptive_config(tmp_path, dict(STREAMS, **{"d/1": "xx!xxcxx"}), num_engines=1)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"d/1.*rerun to resume"):
        run_adaptive_sampling(config, QUESTIONS, out, sampler_cls=ScriptedSampler)
    config, log_dir = adaptive_config(tmp_path, STREAMS, num_engines=1)
    run_adaptive_sampling(config, QUESTIONS, out, sampler_cls=ScriptedSampler)
    assert sample_requests(log_dir)["d/1"] == [[2, 3], [4, 5]]
    stored = SampleStore(out).read("samples", ["question_id"]).column(0).to_pylist()
    assert [stored.count(q) for q in STREAMS] == [2, 6, 8, 2]
