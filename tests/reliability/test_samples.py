"""Samples never mix: resume refuses every mismatch (settings in every stage, question text, gold), engine
errors are re-sampled, a re-grade is atomic under a kill at every step, a damaged part never blocks resume,
and two runs into one output_dir are refused. All on tiny Parquet parts and configs: no Ray, no model."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from jobs.evaluate import EvaluateConfig, check_resume
from lib.config import ConfigError
from lib.data import load_dataset
from lib.sample_store import SCHEMA, SampleStore, plan_requests

REPO = Path(__file__).resolve().parents[2]


def rows(qid, indices, status="correct", finish="stop", error=None, canonical="1"):
    n = len(indices)
    return pa.table(
        {"question_id": [qid] * n, "dataset": ["d"] * n, "sample_idx": list(indices), "text": ["t"] * n,
         "num_tokens": [1] * n, "finish_reason": [finish] * n, "extracted": ["1"] * n,
         "extraction_method": ["boxed"] * n, "canonical": [canonical] * n, "status": [status] * n,
         "error": [error] * n, "gold": ["1"] * n},
        schema=SCHEMA,
    )


# ----------------------------------------------------------------------------------- 5: settings, every stage


@pytest.mark.parametrize("stage", ["all", "sample", "grade", "metrics"])
def test_resume_guard_refuses_other_sampling_settings_in_every_stage(tmp_path, stage):
    """A T=0.7 directory refuses temperature=0.9 whatever the stage (metrics/grade used to accept it and
    rewrite config.yaml with T=0.9, so the next sampling run added T=0.9 samples to T=0.7 ones)."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(EvaluateConfig(output_dir=str(tmp_path)).model_dump(mode="json")))
    with pytest.raises(ConfigError, match=r"temperature: 0.7 -> 0.9"):
        check_resume(EvaluateConfig(output_dir=str(tmp_path), temperature=0.9, stage=stage), tmp_path)
    check_resume(EvaluateConfig(output_dir=str(tmp_path), samples_per_question=66, stage=stage), tmp_path)  # more samples: fine


# ----------------------------------------------------------------------------- 6: question text and gold


def user_file(path: Path, lines: list[tuple[str, str]]) -> Path:
    import json

    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in lines))
    return path


def test_resume_refuses_changed_question_text_or_gold(tmp_path):
    """Ids of a user file are row indices: a line inserted at the top shifts every question. The stored
    content hashes catch it (and a changed gold answer alone), naming the question id and the file."""
    data = user_file(tmp_path / "qs.jsonl", [("What is 1+1?", "2"), ("What is 2+2?", "4"), ("What is 3+3?", "6")])
    store = SampleStore(tmp_path / "out")
    store.check_questions(load_dataset(str(data)))
    store.record_questions(load_dataset(str(data)))
    store.check_questions(load_dataset(str(data)))  # unchanged: fine
    user_file(data, [("What is 0+0?", "0"), ("What is 1+1?", "2"), ("What is 2+2?", "4"), ("What is 3+3?", "6")])
    with pytest.raises(ConfigError, match=r"3 questions changed .*'qs/0'.*question text or gold answer"):
        store.check_questions(load_dataset(str(data)))
    user_file(data, [("What is 1+1?", "2"), ("What is 2+2?", "5"), ("What is 3+3?", "6")])
    with pytest.raises(ConfigError, match=r"1 questions changed .*'qs/1'"):
        store.check_questions(load_dataset(str(data)))
    user_file(data, [("What is 1+1?", "2"), ("What is 2+2?", "4"), ("What is 3+3?", "6"), ("What is 4+4?", "8")])
    store.check_questions(load_dataset(str(data)))  # a new question (a larger limit) is fine


# --------------------------------------------------------------------------------------- 7: engine errors


def test_engine_error_rows_are_resampled_and_replaced(tmp_path):
    """An engine-error row (finish_reason 'error') does not count as done: the rerun plans it again and the
    new sample replaces it (it used to be stored as done forever, so max_error_fraction failed every rerun)."""
    from lib.data import Question

    store = SampleStore(tmp_path)
    store.write("samples", rows("q1", [0, 1], status="correct"))
    store.write("samples", rows("q1", [2, 3], status="error", finish="error", error="generate failed: boom", canonical=None))
    assert store.existing("samples") == {"q1": {0, 1}}
    plan = plan_requests([Question("q1", "d", "Q?", "1")], store.existing("samples"), {}, samples_per_question=4,
                         samples_per_request=8, greedy=False)
    assert [(r["kind"], r["sample_indices"]) for r in plan] == [("samples", [2, 3])]
    store.write("samples", rows("q1", [2, 3], status="incorrect"))
    table = store.read("samples", ["question_id", "sample_idx", "status"])
    assert sorted(zip(table.column("sample_idx").to_pylist(), table.column("status").to_pylist())) == [
        (0, "correct"), (1, "correct"), (2, "incorrect"), (3, "incorrect")]


# ------------------------------------------------------------------------------ 8: atomic re-grade, parts


def regraded_store(tmp_path):
    """A store with 3 samples graded 'incorrect' and a complete re-graded copy ('correct') in staging."""
    store = SampleStore(tmp_path)
    store.write("samples", rows("q1", [0, 1, 2], status="incorrect"))
    staging = store.staging()
    SampleStore(staging).write("samples", rows("q1", [0, 1, 2], status="correct"))
    return store


def statuses(store):
    return sorted(store.read("samples", ["question_id", "sample_idx", "status"]).column("status").to_pylist())


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("step", range(6))
def test_regrade_swap_is_atomic_under_a_kill_at_every_step(tmp_path, monkeypatch, step):
    """Kill the swap at each of its file operations; the next start's clean() leaves either every old grade
    or every new one (never 0 samples, never a mix), and a following re-grade swaps in cleanly (a stale
    .old-samples used to fail it with Errno 39 after all its work)."""
    import lib.sample_store as module

    store = regraded_store(tmp_path)
    calls = {"n": 0}
    real = {"replace": os.replace, "rmtree": shutil.rmtree, "fsync": os.fsync}

    def counted(name):
        def op(*args, **kwargs):
            if name != "fsync":
                calls["n"] += 1
                if calls["n"] > step:
                    raise Killed
            return real[name](*args, **kwargs)
        return op

    monkeypatch.setattr(module.os, "replace", counted("replace"))
    monkeypatch.setattr(module.shutil, "rmtree", counted("rmtree"))
    try:
        store.swap_in("samples")
        finished = True
    except Killed:
        finished = False
    monkeypatch.undo()
    store.clean()
    got = statuses(store)
    assert got in (["correct"] * 3, ["incorrect"] * 3), got
    if finished:
        assert got == ["correct"] * 3
    assert not (tmp_path / ".old-samples").exists() and not store.staging().exists()
    SampleStore(store.staging()).write("samples", rows("q1", [0, 1, 2], status="no_answer"))
    store.swap_in("samples")
    assert statuses(store) == ["no_answer"] * 3


def test_kill_between_the_renames_rolls_the_complete_copy_forward(tmp_path):
    """The old code's failure: samples/ renamed away, the re-graded copy not yet in place. The rerun used to
    discard the copy and report 0 samples; clean() now finishes the swap."""
    store = regraded_store(tmp_path)
    store.mark_complete("samples")
    (tmp_path / "samples").rename(tmp_path / ".old-samples")
    store.clean()
    assert statuses(store) == ["correct"] * 3


def test_kill_before_the_copy_is_complete_rolls_back(tmp_path):
    store = regraded_store(tmp_path)
    (tmp_path / "samples").rename(tmp_path / ".old-samples")  # no completion marker: the copy is partial
    store.clean()
    assert statuses(store) == ["incorrect"] * 3


def test_empty_or_truncated_part_is_set_aside_and_its_samples_resampled(tmp_path):
    """A zero-byte or truncated part (a crash on a filesystem without ordered writes) used to make every read
    fail until deleted by hand; clean() moves it to .corrupt/ and its samples count as missing."""
    store = SampleStore(tmp_path)
    store.write("samples", rows("q1", [0, 1]))
    good = store.write("samples", rows("q1", [2, 3]))
    (tmp_path / "samples" / "part-empty.parquet").write_bytes(b"")
    truncated = tmp_path / "samples" / "part-truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    assert store.clean() == 2
    assert store.existing("samples") == {"q1": {0, 1}}
    assert sorted(p.name for p in (tmp_path / ".corrupt").iterdir()) == ["samples-part-empty.parquet",
                                                                         "samples-part-truncated.parquet"]


# --------------------------------------------------------------------------------------- 9: one run only


def test_a_second_run_into_the_same_output_dir_is_refused_naming_the_holder(tmp_path):
    """While one process holds output_dir, another is refused with its pid in the message (the second run's
    clean-up used to delete the first run's in-flight parts); once it exits the lock is free again."""
    from lib.output_dir import hold_output_dir

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lib.output_dir import hold_output_dir\n"
         "with hold_output_dir(sys.argv[1], 'evaluate'):\n print('held', flush=True); time.sleep(60)", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"output_dir {tmp_path} is in use by evaluate \(pid {holder.pid} on "):
            with hold_output_dir(tmp_path, "evaluate"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold_output_dir(tmp_path, "evaluate"):
        pass
