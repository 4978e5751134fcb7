"""The evaluate job on the real embedded default model, where the answers' content matters."""

from pathlib import Path

import pytest

from jobs.evaluate import main as evaluate
from lib.grading import grade
from lib.sample_store import SampleStore

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_default_model_samples_are_graded_as_the_grader_says(ray_cluster, default_model, tmp_path):
    """SmolLM2 on 2 GSM8K questions: every stored verdict equals lib.grading.grade on the stored text,
    and the texts are real generations (tokens counted, finish reasons from the engine)."""
    out = tmp_path / "eval"
    metrics = evaluate(["--config", str(REPO / "jobs/configs/evaluate_tiny.yaml"), f"output_dir={out}",
                        "limit=2", "samples_per_question=4", "max_tokens=128"]).metrics
    table = SampleStore(out).read("samples").to_pylist() + SampleStore(out).read("greedy").to_pylist()
    assert len(table) == 2 * 4 + 2
    for row in table:
        assert row["num_tokens"] > 0 and row["text"].strip()
        assert row["finish_reason"] in ("stop", "length")
        verdict = grade(row["text"], row["gold"])
        assert (row["status"], row["extracted"]) == (verdict.status, verdict.extracted)
    assert {r["gold"] for r in table} == {"18", "3"}
    assert sum(metrics["gsm8k"]["status_counts"].values()) == 8
