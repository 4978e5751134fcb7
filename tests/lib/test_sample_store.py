"""Resume bookkeeping: atomic parts, which samples exist, and what is still to request."""

import pyarrow as pa

from lib.data import Question
from lib.sample_store import SCHEMA, SampleStore, plan_requests


def rows(qid, indices):
    n = len(indices)
    return pa.table(
        {
            "question_id": [qid] * n, "dataset": ["d"] * n, "sample_idx": list(indices), "text": ["t"] * n,
            "num_tokens": [1] * n, "finish_reason": ["stop"] * n, "extracted": ["1"] * n,
            "extraction_method": ["boxed"] * n, "canonical": ["1"] * n, "status": ["correct"] * n,
            "error": [None] * n, "gold": ["1"] * n,
        },
        schema=SCHEMA,
    )


def test_existing_reads_parts_and_clean_removes_partial_files(tmp_path):
    """Whole parts count; a *.tmp left by a kill is removed and never read."""
    store = SampleStore(tmp_path)
    store.write("samples", rows("q1", [0, 1, 2]))
    store.write("samples", rows("q2", [5]))
    (tmp_path / "samples" / "part-dead.tmp").write_bytes(b"PAR1 half a file")
    assert store.clean() == 1
    assert store.existing("samples") == {"q1": {0, 1, 2}, "q2": {5}}
    assert store.existing("greedy") == {}


def test_read_drops_duplicate_pairs(tmp_path):
    """If two parts hold the same (question, sample) pair, read() returns it once."""
    store = SampleStore(tmp_path)
    store.write("samples", rows("q1", [0, 1]))
    store.write("samples", rows("q1", [1, 2]))
    table = store.read("samples")
    assert sorted(table.column("sample_idx").to_pylist()) == [0, 1, 2]


def test_read_questions_reads_only_their_rows_from_the_parts_that_hold_them(tmp_path, monkeypatch):
    """q1 spans two parts (one overlapping pair), q2 and q3 one each: read_questions(["q1", "q3"]) gives exactly
    read()'s rows of q1 and q3, opens only the three parts that hold them, and a question with no rows gives none."""
    import lib.sample_store as store_module

    store = SampleStore(tmp_path)
    store.write("samples", rows("q1", [0, 1]))
    store.write("samples", rows("q1", [1, 2]))
    store.write("samples", rows("q2", [0]))
    store.write("samples", rows("q3", [4]))
    store.read_questions("samples", ["q2"])  # builds the question -> parts index
    opened = []
    real = store_module._read_part
    monkeypatch.setattr(store_module, "_read_part", lambda path, columns: opened.append(path.name) or real(path, columns))
    got = store.read_questions("samples", ["q1", "q3"], ["question_id", "sample_idx"])
    pairs = sorted(zip(got.column("question_id").to_pylist(), got.column("sample_idx").to_pylist()))
    assert pairs == [("q1", 0), ("q1", 1), ("q1", 2), ("q3", 4)]
    whole = store.read("samples", ["question_id", "sample_idx"])
    assert pairs == sorted((q, i) for q, i in zip(whole.column("question_id").to_pylist(), whole.column("sample_idx").to_pylist()) if q != "q2")
    assert len(opened) == 3 + 4  # read_questions: the 3 parts of q1 and q3; then read(): all 4
    assert store.read_questions("samples", ["nope"]).num_rows == 0


def test_plan_requests_asks_only_for_missing_samples_in_chunks():
    """q1 has 0..4 of 10 and its greedy sample; q2 nothing: exact request rows."""
    qs = [Question("q1", "d", "Q1?", "1"), Question("q2", "d", "Q2?", "2")]
    plan = plan_requests(qs, {"q1": {0, 1, 2, 3, 4}}, {"q1": {0}}, samples_per_question=10, samples_per_request=4, greedy=True)
    got = [(r["question_id"], r["kind"], r["sample_indices"]) for r in plan]
    assert got == [
        ("q1", "samples", [5, 6, 7, 8]),
        ("q1", "samples", [9]),
        ("q2", "greedy", [0]),
        ("q2", "samples", [0, 1, 2, 3]),
        ("q2", "samples", [4, 5, 6, 7]),
        ("q2", "samples", [8, 9]),
    ]
    done = {"q1": set(range(10)), "q2": set(range(10))}
    assert plan_requests(qs, done, {"q1": {0}, "q2": {0}}, samples_per_question=10, samples_per_request=4, greedy=True) == []
