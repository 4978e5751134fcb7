"""The evaluate job end to end on a real local Ray cluster and a real vLLM engine (CPU build).

Structure tests use a tiny random Llama (answers are noise, shapes and bookkeeping are what counts).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jobs.evaluate import main as evaluate
from lib.config import ConfigError
from lib.grading import STATUSES
from lib.sample_store import SampleStore

REPO = Path(__file__).resolve().parents[2]
ENGINE = ["engine.max_model_len=512", "engine.gpu_memory_utilization=0.2", "engine.enforce_eager=true"]

pytestmark = pytest.mark.slow


def run(model, out, *overrides):
    return evaluate(["--config", str(REPO / "jobs/configs/evaluate_tiny.yaml"), f"model={model}", f"output_dir={out}", *ENGINE, *overrides])


def pairs(out, kind="samples"):
    table = SampleStore(out).read(kind, ["question_id", "sample_idx"])
    return list(zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist()))


def raw_rows(out, kind="samples"):
    """Rows in the parts on disk, without read()'s de-duplication."""
    return sum(pq.read_metadata(p).num_rows for p in SampleStore(out).parts(kind))


def test_changed_sampling_settings_refuse_to_resume(tiny_model, tmp_path):
    """Adding samples drawn at another temperature to a run's directory is refused before any work."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"model": tiny_model, "temperature": 0.7, "prompt": "boxed", "max_tokens": 4, "top_p": 1.0}))
    with pytest.raises(ConfigError, match=r"holds samples drawn with other settings \(temperature: 0.7 -> 1.0\)"):
        run(tiny_model, out, "max_tokens=4", "temperature=1.0")


def test_sigkill_then_rerun_to_1024_samples_gives_exact_rows_a_rerun_draws_nothing_and_regrade_keeps_all(
        ray_cluster, tiny_model, tmp_path, caplog):
    """A run of 1000 samples per question x 2 questions, killed with SIGKILL mid-sampling (its own process and
    Ray), rerun asking for 1024: exactly 2 x 1024 rows, no duplicates, and the rerun draws only the missing
    samples (the killed run's and the 24 more per question). A second rerun draws nothing; re-grading keeps
    every row; the outputs have the documented shape. The reruns join the suite's Ray (the resume is
    bookkeeping on disk, not Ray state). The killed run writes a part per 64-sample request (32 parts and the
    greedy one), so sampling outlasts the 3 parts it waits for; the rerun asks 128 per request, 8 requests per
    batch (several chunks of one question share a batch: progress still counts both questions as done)."""
    out = tmp_path / "eval"
    sizes = ["limit=2", "max_tokens=4"]
    args = [sys.executable, "-m", "jobs.evaluate", "--config", "jobs/configs/evaluate_tiny.yaml", f"model={tiny_model}",
            f"output_dir={out}", *ENGINE, *sizes, "samples_per_question=1000", "resources.samples_per_request=64",
            "resources.requests_per_batch=1"]
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and len(SampleStore(out).parts("samples")) < 3:
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = set(pairs(out))
    greedy_before = len(pairs(out, "greedy"))
    assert 0 < len(before) < 2000, f"killed too late or too early: {len(before)} samples"

    caplog.set_level("INFO", logger="mathray")
    table = run(tiny_model, out, *sizes, "samples_per_question=1024", "resources.samples_per_request=128").table
    to_draw = (2 * 1024 - len(before)) + (2 - greedy_before)
    assert f"sampling {to_draw} samples" in caplog.text
    assert f"evaluate: {to_draw}/{to_draw} samples | questions_done 2 (" in caplog.text
    got = pairs(out)
    assert raw_rows(out) == 2048 and len(set(got)) == 2048 and before <= set(got)
    assert sorted(got) == sorted((q, i) for q in ("gsm8k/test/0", "gsm8k/test/1") for i in range(1024))
    assert len(pairs(out, "greedy")) == 2 and raw_rows(out, "greedy") == 2

    num_parts = len(SampleStore(out).parts("samples"))
    run(tiny_model, out, *sizes, "samples_per_question=1024")
    assert len(SampleStore(out).parts("samples")) == num_parts  # nothing re-sampled

    saved = json.loads((out / "metrics.json").read_text())
    entry = saved["gsm8k"]
    assert entry["num_questions"] == 2 and entry["samples_per_question"] == 1024
    assert list(entry["pass@k"]) == [str(2**i) for i in range(11)] and list(entry["maj@k"]) == list(entry["pass@k"])
    assert set(entry["status_counts"]) == set(STATUSES) and sum(entry["status_counts"].values()) == 2048
    assert sum(entry["greedy_status_counts"].values()) == 2
    assert {"pass_ratio", "greedy_pass@1", "ci95", "grader"} <= set(entry)
    assert (out / "passk.png").stat().st_size > 1000
    assert "| gsm8k | 2 | 1024 |" in (out / "summary.md").read_text() and "| gsm8k | 2 | 1024 |" in table
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["samples_per_question"] == 1024
    assert config["_provenance"]["versions"]["math-verify"] and config["_provenance"]["grader"]["grader_version"]

    samples = SampleStore(out).read("samples")
    assert set(samples.column("status").to_pylist()) <= set(STATUSES)
    assert max(samples.column("num_tokens").to_pylist()) <= 4

    metrics_after = run(tiny_model, out, *sizes, "samples_per_question=1024", "stage=grade").metrics
    assert raw_rows(out) == 2048 and raw_rows(out, "greedy") == 2
    assert metrics_after["gsm8k"]["status_counts"] == entry["status_counts"]
    summary = json.loads((out / "summary.json").read_text())  # the last run's: stage=grade
    assert (summary["stage"], summary["questions"], summary["samples_per_question"]) == ("grade", 2, 1024)
    assert set(summary["results"]["gsm8k"]) == {"greedy_pass@1", "pass@1", "pass@1024", "maj@1024"}
    assert summary["results"]["gsm8k"]["pass@1024"] == entry["pass@k"]["1024"] and "metrics" not in summary
    assert not (out / ".regrade").exists()
