"""The scale benchmark's stand-in engine (no Ray, no model): it replays stored real samples as the sampling
stage's rows, for the synthetic questions that evaluate's stage=metrics later reads back."""

import pyarrow as pa

from jobs.bench_grading import StandInEngine, load_pool, write_questions
from lib.sample_store import SCHEMA, SampleStore, plan_requests
from lib.sampling import SAMPLE_COLUMNS


def store_real_samples(root):
    rows = {"question_id": ["gsm8k/test/0"] * 3 + ["gsm8k/test/1"] * 2, "dataset": ["gsm8k"] * 5, "sample_idx": [0, 1, 2, 0, 1],
            "text": ["a \\boxed{3}", "b \\boxed{4}", "", "c \\boxed{7}", "d \\boxed{8}"], "num_tokens": [5, 6, 0, 7, 8],
            "finish_reason": ["stop", "length", "error", "stop", "stop"], "gold": ["3", "3", "3", "7", "7"]}
    rows.update({c: [None] * 5 for c in SCHEMA.names if c not in rows})
    SampleStore(root).write("samples", pa.table(rows, schema=SCHEMA))


def test_stand_in_replays_each_questions_own_real_samples(tmp_path):
    """Synthetic question i takes the texts and gold of real question i mod 2; engine-error rows are never replayed;
    rows have the sampler's columns, one per requested index; the same (question, index) always gets the same text."""
    store_real_samples(tmp_path / "real")
    pool, sources = load_pool(tmp_path / "real")
    assert [len(p["texts"]) for p in pool] == [2, 2] and [s["gold"] for s in sources] == ["3", "7"]
    questions = write_questions(tmp_path / "scale.jsonl", 3, sources)
    assert [(q.id, q.dataset, q.answer) for q in questions] == [("scale/0", "scale", "3"), ("scale/1", "scale", "7"), ("scale/2", "scale", "3")]
    requests = plan_requests(questions, {}, {}, samples_per_question=5, samples_per_request=4, greedy=False)
    batch = {k: [r[k] for r in requests] for k in requests[0]}
    rows = StandInEngine(pool)(batch)
    assert list(rows) == list(SAMPLE_COLUMNS) and len(rows["text"]) == 15
    assert rows["sample_idx"] == [0, 1, 2, 3, 4] * 3
    by_q = {q: {t for qq, t in zip(rows["question_id"], rows["text"]) if qq == q} for q in ("scale/0", "scale/1", "scale/2")}
    assert by_q["scale/0"] <= {"a \\boxed{3}", "b \\boxed{4}"} and by_q["scale/1"] <= {"c \\boxed{7}", "d \\boxed{8}"}
    assert rows["gold"][:5] == ["3"] * 5 and rows["gold"][5:10] == ["7"] * 5 and set(rows["error"]) == {None}
    assert StandInEngine(pool)(batch) == rows
