"""issue 15: on a stored full run, the adaptive pass@k estimator computed from each question's first-success
prefix (the rows a ``stop_at_first_correct`` run would have drawn) agrees with the full estimator within CIs.

Two stored runs: a synthetic one (200 questions x 64 samples, per-question success probabilities known) and a
real one, ``tests/data/stored_runs/smollm2_gsm_symbolic_n4.parquet`` (SmolLM2-135M-Instruct on GSM-Symbolic,
4 samples x 180 questions, T=0.7: jobs/configs/evaluate_symbolic_cpu.yaml run at commit 536ee49; columns
question_id, dataset, sample_idx, status, canonical). Pure: no Ray, no engine.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib.data import Question
from lib.metrics import adaptive_num_drawn, first_success, k_values
from lib.report import compute_adaptive_metrics, compute_metrics

STORED = Path(__file__).resolve().parents[1] / "data" / "stored_runs" / "smollm2_gsm_symbolic_n4.parquet"


def adaptive_view(samples: pa.Table, n: int, chunk: int) -> pa.Table:
    """The rows of ``samples`` an adaptive run in chunks of ``chunk`` would have stored."""
    rows = samples.to_pylist()
    by_question: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["question_id"], r["sample_idx"])):
        by_question.setdefault(row["question_id"], []).append(row)
    kept = []
    for qrows in by_question.values():
        drawn = adaptive_num_drawn(first_success([r["status"] == "correct" for r in qrows]), n, chunk)
        kept += qrows[:drawn]
    return pa.Table.from_pylist(kept, schema=samples.schema)


def synthetic_run(num_questions: int, n: int, seed: int = 0) -> tuple[list[Question], pa.Table, np.ndarray]:
    """A stored full run whose question q succeeds with probability p[q] per sample (p cycles over a mix)."""
    p = np.resize([0.0, 0.01, 0.05, 0.2, 0.5, 0.9], num_questions)
    rng = np.random.default_rng(seed)
    correct = rng.random((num_questions, n)) < p[:, None]
    questions = [Question(id=f"s/{q}", dataset="s", question="?", answer="1") for q in range(num_questions)]
    table = pa.table({
        "question_id": [f"s/{q}" for q in range(num_questions) for _ in range(n)],
        "sample_idx": [i for _ in range(num_questions) for i in range(n)],
        "status": ["correct" if c else "incorrect" for c in correct.ravel()],
        "canonical": ["1" if c else str(2 + i % 3) for i, c in enumerate(correct.ravel())],
    })
    return questions, table, p


def check_agreement(questions, samples, n, chunk, dataset):
    full = compute_metrics(questions, samples, None, n)[dataset]
    view = adaptive_view(samples, n, chunk)
    adaptive = compute_adaptive_metrics(questions, view, None, n)[dataset]
    for k in k_values(n):
        lo, hi = adaptive["ci95"][f"pass@{k}"]
        assert lo <= full["pass@k"][str(k)] <= hi, (k, full["pass@k"][str(k)], lo, hi)
    # exact where the two estimators coincide: pass@n (a success among all n) and pass@1 (sample 0 correct)
    assert adaptive["pass@k"][str(n)] == pytest.approx(full["pass@k"][str(n)])
    first_correct = samples.filter(pa.compute.equal(samples.column("sample_idx"), 0)).column("status").to_pylist()
    assert adaptive["pass@k"]["1"] == pytest.approx(sum(s == "correct" for s in first_correct) / len(questions))
    assert adaptive["samples_drawn"] == view.num_rows and adaptive["samples_full"] == n * len(questions)
    return full, adaptive


def test_adaptive_prefix_agrees_with_full_estimator_on_a_synthetic_stored_run(tmp_path):
    """200 questions x 64 samples with known p: at every stored k the full estimate lies in the adaptive CI and
    the adaptive one in the full CI, both lie within their CIs of the true mean pass@k, and the prefix holds a fraction of the rows."""
    n, chunk = 64, 4
    questions, samples, p = synthetic_run(200, n)
    pq.write_table(samples, tmp_path / "samples.parquet")  # stored and read back, as a run's rows are
    samples = pq.read_table(tmp_path / "samples.parquet")
    full, adaptive = check_agreement(questions, samples, n, chunk, "s")
    for k in k_values(n):
        lo, hi = full["ci95"][f"pass@{k}"]
        assert lo <= adaptive["pass@k"][str(k)] <= hi, (k, adaptive["pass@k"][str(k)], lo, hi)
        truth = float(np.mean(1 - (1 - p) ** k))
        for m in (full, adaptive):
            lo, hi = m["ci95"][f"pass@{k}"]
            assert lo <= truth <= hi, (k, truth, lo, hi)
    assert adaptive["samples_drawn"] < 0.5 * adaptive["samples_full"]


def test_adaptive_prefix_agrees_with_full_estimator_on_a_real_stored_run():
    """SmolLM2-135M on GSM-Symbolic (stored rows, 180 questions pooled, n=4, chunk 1): the full estimate lies in
    the adaptive CI at every k; pass@4 and pass@1 coincide exactly. Its 7 correct samples (4 questions solved at
    sample 0, 3 at sample 2) make pass@1 differ: 7/720 full vs 4/180 from first samples."""
    samples = pq.read_table(STORED).select(["question_id", "sample_idx", "status", "canonical"])
    ids = sorted(set(samples.column("question_id").to_pylist()))
    questions = [Question(id=q, dataset="gsm_symbolic_all", question="?", answer="1") for q in ids]
    full, adaptive = check_agreement(questions, samples, 4, 1, "gsm_symbolic_all")
    assert (full["pass@k"]["1"], adaptive["pass@k"]["1"]) == (pytest.approx(7 / 720), pytest.approx(4 / 180))
    assert adaptive["pass@k"]["4"] == pytest.approx(7 / 180)
    assert adaptive["samples_drawn"] == 4 * 1 + 3 * 3 + (180 - 7) * 4
