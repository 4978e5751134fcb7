"""The jobs' stages called directly on small dicts, without Ray: the grade-and-store stage of the evaluation
job, the synthesis stage against the loopback stand-in teacher, and the SFT step on a tiny Llama.

The slow tests run the same stages inside whole jobs (Ray Data, Ray Train, vLLM); these pin down what each
stage does with one batch, in seconds."""

import asyncio
import json

import pytest

from lib.sample_store import GradeAndStore, SampleStore
from tests.fake_teacher import FakeTeacher


def sample_batch() -> dict[str, list]:
    """Sampler output (lib.sampling.SAMPLE_COLUMNS) for question q1 (gold 4): a correct, an incorrect and an
    unanswered sample, an engine-error row, and q1's greedy sample."""
    rows = [
        ("samples", 0, "So 2 + 2 = \\boxed{4}.", 7, "stop", None),
        ("samples", 1, "I think it is \\boxed{5}.", 6, "stop", None),
        ("samples", 2, "I cannot tell", 3, "length", None),
        ("samples", 3, "", 0, "error", "generate failed: RuntimeError: boom"),
        ("greedy", 0, "The answer is \\boxed{4}", 6, "stop", None),
    ]
    return {"question_id": ["q1"] * 5, "dataset": ["gsm8k"] * 5, "gold": ["4"] * 5, "kind": [r[0] for r in rows],
            "sample_idx": [r[1] for r in rows], "text": [r[2] for r in rows], "num_tokens": [r[3] for r in rows],
            "finish_reason": [r[4] for r in rows], "error": [r[5] for r in rows]}


def test_grade_and_store_grades_writes_one_part_per_kind_and_returns_per_question_counts(tmp_path):
    """Each row gets its verdict (an engine-error row stays an error with its message, never graded); rows go
    to their kind's part; the summary counts samples, tokens and correct answers per (question, kind)."""
    stage = GradeAndStore(str(tmp_path), timeout_s=5.0)
    try:
        summary = stage(sample_batch())
    finally:
        stage.grader.close()
    assert summary == {"question_id": ["q1", "q1"], "kind": ["greedy", "samples"], "num_samples": [1, 4],
                       "num_tokens": [6, 16], "num_correct": [1, 1], "num_errors": [0, 1]}
    store = SampleStore(tmp_path)
    assert len(store.parts("samples")) == 1 and len(store.parts("greedy")) == 1
    samples = store.read("samples").sort_by("sample_idx").to_pylist()
    assert [r["status"] for r in samples] == ["correct", "incorrect", "no_answer", "error"]
    assert [r["extracted"] for r in samples] == ["4", "5", None, None]
    assert samples[3]["error"] == "generate failed: RuntimeError: boom" and samples[3]["extraction_method"] == "none"
    assert {r["gold"] for r in samples} == {"4"} and {r["dataset"] for r in samples} == {"gsm8k"}
    assert store.existing("samples") == {"q1": {0, 1, 2}}  # the error row is sampled again on resume
    assert [r["status"] for r in store.read("greedy").to_pylist()] == ["correct"]


def test_grade_and_store_regrade_uses_the_given_golds_and_one_kind(tmp_path):
    """Re-grading (``golds=`` from questions.json, ``kind=`` for the whole batch) ignores the rows' gold column."""
    batch = sample_batch()
    stage = GradeAndStore(str(tmp_path), timeout_s=5.0, golds={"q1": "5"})
    try:
        summary = stage({k: v[:2] for k, v in batch.items()}, kind="samples")
    finally:
        stage.grader.close()
    assert summary["num_correct"] == [1] and summary["num_samples"] == [2]
    rows = SampleStore(tmp_path).read("samples").sort_by("sample_idx").to_pylist()
    assert [(r["status"], r["gold"]) for r in rows] == [("incorrect", "5"), ("correct", "5")]


def seed_batch(n: int) -> dict[str, list]:
    from lib.data import load_dataset

    seeds = load_dataset("gsm8k", split="train", limit=n)
    return {"seed_id": [q.id for q in seeds], "dataset": [q.dataset for q in seeds], "question": [q.question for q in seeds],
            "answer": [q.answer for q in seeds], "level": [None] * n, "type": [None] * n}


def test_synthesis_stage_on_two_seeds_with_the_stand_in_teacher_then_from_its_cache(tmp_path):
    """Two seeds x 2 questions, 4 solutions each, verification on: the stand-in teacher's solutions agree 3 of 4
    (sample seeds 0..3; seed 3 answers off by one), so every question is kept with 3 majority solutions, each
    verified. Requests: per question 1 + 4 + 3 = 8. The same batch through a fresh stage on the same cache sends
    nothing and returns the same rows."""
    from lib.synthesis_stage import QUESTION_COLUMNS, SynthesizeSeeds

    stage_settings = {"questions_per_seed": 2, "solutions_per_question": 4, "question_max_tokens": 64,
                      "filters": {"verify": True, "min_agreement": 0.5}}
    with FakeTeacher() as teacher:
        teacher_settings = {"base_url": teacher.base_url, "model": "fake-teacher", "max_attempts": 1}

        def run() -> list[dict]:
            stage = SynthesizeSeeds(teacher_settings, stage_settings, str(tmp_path / "cache.sqlite"))
            try:
                return asyncio.run(stage(seed_batch(2))).to_pylist()
            finally:
                stage.grader.close()

        rows = run()
        assert len(teacher.log) == 2 * 2 * 8
        again = run()
        assert len(teacher.log) == 32
    for first, cached in zip(rows, again, strict=True):
        usage = json.loads(cached.pop("usage_json"))
        assert [(usage[s]["cached"], usage[s]["requests"]) for s in ("question", "solution", "verify")] == [(1, 0), (4, 0), (3, 0)]
        assert {k: v for k, v in first.items() if k != "usage_json"} == cached
    assert [r["question_id"] for r in rows] == [f"{s}/q{i}" for s in seed_batch(2)["seed_id"] for i in (0, 1)]
    assert all(set(r) == set(QUESTION_COLUMNS) for r in rows)
    assert [(r["status"], r["votes"], r["agreement"]) for r in rows] == [("kept", 3, 0.75)] * 4
    for r in rows:
        solutions = json.loads(r["solutions_json"])
        assert [s["keep"] for s in solutions] == [True, True, True, False]
        assert [s["verified"] for s in solutions] == [True, True, True, None]
        assert r["question"] and r["label"] == solutions[0]["answer"] and len(r["signature"]) == 128
        usage = json.loads(r["usage_json"])
        assert [usage[s]["requests"] for s in ("question", "solution", "verify")] == [1, 4, 3]
        assert json.loads(r["errors_json"]) == []


def test_synthesis_stage_records_a_failed_request_in_the_row(tmp_path):
    """A teacher that answers 500 to the first request (a question request; no retries): that question's row
    says request_failed with the error; the other question is kept (its 2 solutions agree)."""
    from lib.synthesis_stage import SynthesizeSeeds

    with FakeTeacher(faults=["500"]) as teacher:
        stage = SynthesizeSeeds({"base_url": teacher.base_url, "model": "fake-teacher", "max_attempts": 1},
                                {"questions_per_seed": 2, "solutions_per_question": 2}, str(tmp_path / "cache.sqlite"))
        try:
            rows = asyncio.run(stage(seed_batch(1))).to_pylist()
        finally:
            stage.grader.close()
    assert sorted(r["status"] for r in rows) == ["kept", "request_failed"]
    failed, kept = sorted(rows, key=lambda r: r["status"] == "kept")
    assert failed["question"] is None and json.loads(failed["errors_json"])[0].startswith("question: ")
    assert "500" in json.loads(failed["errors_json"])[0]
    assert (kept["votes"], kept["agreement"]) == (2, 1.0)  # sample seeds 0 and 1 agree


def tiny_llama():
    """The tiny Llama's shape (2 layers, 2 heads) with a 256-token vocabulary, fp32, built in memory: the step
    does not depend on the tokenizer, and the stage test stays a unit test (no checkpoint on disk)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(torch.float32)


def sft_examples():
    """4 examples of 20..50 tokens whose first 6 tokens are the (masked) prompt."""
    from lib.sft import IGNORE, Example

    return [Example([(7 * k + i) % 250 + 1 for i in range(n)], [IGNORE] * 6 + [(7 * k + i) % 250 + 1 for i in range(6, n)])
            for k, n in enumerate((20, 33, 41, 50))]


def test_sft_step_lowers_the_loss_and_a_saved_state_resumes_to_the_same_next_step(tmp_path):
    """One process, no Ray: the SFT step (packing, strategy none) on the same 4 examples every step lowers the
    loss at each of 3 steps, counting label and processed tokens exactly; a trainer restored from the step-2
    checkpoint (DCP) reports the saved data position and takes a third step equal (1e-6) to the uninterrupted
    one, at the same learning rate."""
    from lib.train_loop import SFTTrainer, StepSettings, micro_batches

    settings = StepSettings(lr=1e-3, weight_decay=0.0, warmup_steps=1, total_steps=3, max_grad_norm=1.0,
                            global_batch_size=4, micro_batch_tokens=96, packing=True, varlen=False, seed=0)
    examples, batch = sft_examples(), [0, 1, 2, 3]
    assert len(micro_batches(examples, batch, settings, 0)) == 2  # 144 tokens packed into micro-batches of <= 96
    trainer = SFTTrainer(tiny_llama(), settings, "none")
    losses = []
    for step in (1, 2, 3):
        loss, tokens, processed = trainer.train_step(micro_batches(examples, batch, settings, 0), 0)
        assert (tokens, processed) == (144 - 4 * 6, 144)
        losses.append(loss)
        if step == 2:
            trainer.save(tmp_path / "ckpt", {"epoch": 1, "batch": 0})
    assert losses[1] < losses[0] and losses[2] < losses[1], losses
    assert trainer.step == 3

    resumed = SFTTrainer(tiny_llama(), settings, "none")
    assert resumed.load(tmp_path / "ckpt") == {"epoch": 1, "batch": 0} and resumed.step == 2
    loss, _, _ = resumed.train_step(micro_batches(examples, batch, settings, 0), 0)
    assert loss == pytest.approx(losses[2], abs=1e-6) and resumed.lr == trainer.lr


@pytest.mark.parametrize("stop_after", [2, 3, 4])  # mid-epoch, an epoch's last batch, the next epoch's first
def test_the_data_order_resumes_from_a_saved_position_mid_epoch_and_at_an_epochs_end(stop_after):
    """10 examples, batches of 4 (3 per epoch, the last short), 2 epochs: resuming from the position saved after
    ``stop_after`` steps (what the job stores: the epoch and the next batch) yields exactly the remaining steps
    of an uninterrupted run; every epoch is a permutation of the examples, reshuffled per epoch."""
    from lib.train_loop import StepSettings, iter_steps

    s = StepSettings(global_batch_size=4, seed=3)
    full = list(iter_steps(10, s, epochs=2))
    assert [(e, b, len(batch)) for e, b, batch in full] == [(0, 0, 4), (0, 1, 4), (0, 2, 2), (1, 0, 4), (1, 1, 4), (1, 2, 2)]
    for epoch in (0, 1):
        assert sorted(i for e, _, batch in full if e == epoch for i in batch) == list(range(10))
    assert [batch for e, _, batch in full if e == 0] != [batch for e, _, batch in full if e == 1]
    epoch, b, _ = full[stop_after - 1]
    assert list(iter_steps(10, s, epochs=2, start={"epoch": epoch, "batch": b + 1})) == full[stop_after:]
