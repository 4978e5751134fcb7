"""Dry-run plan arithmetic: bundle packing onto node shapes, evaluation/SFT/teacher work counts and costs."""

import pytest

from lib.plan import NodeShape, StagePlan, bundles, check_plan, evaluate_work, teacher_work, train_work, unschedulable

SHAPES = [NodeShape("head", 12, 0, 1), NodeShape("gpu", 86, 8, 2)]


def test_bundles_pack_onto_nodes_first_fit():
    """16 one-GPU bundles fill two 8-GPU nodes; a 17th, or one bundle larger than any node, cannot be placed."""
    assert unschedulable(bundles(16, 4, 1), SHAPES) is None
    assert unschedulable(bundles(16, 4, 1) + bundles(3, 4), SHAPES) is None  # CPU-only bundles on the head too
    assert unschedulable(bundles(17, 4, 1), SHAPES) == (
        "17 bundles (68 CPUs, 17 GPUs in all) do not fit on 1 x head (12 CPUs, 0 GPUs), 2 x gpu (86 CPUs, 8 GPUs)")
    assert unschedulable(bundles(1, 100), SHAPES) == (
        "one bundle {'CPU': 100} is larger than every node (largest: gpu: 86 CPUs, 8 GPUs)")
    assert unschedulable(bundles(2, 50, 4), SHAPES) is None and unschedulable(bundles(3, 50, 4), SHAPES) is not None


def test_check_plan_names_each_unschedulable_stage():
    stages = [StagePlan("a", bundles(8, 1, 1), {}), StagePlan("b", bundles(1, 1, 9), {}), StagePlan("c", [], {})]
    assert check_plan(stages, SHAPES) == [
        "stage b: can never be scheduled: one bundle {'CPU': 1, 'GPU': 9} is larger than every node (largest: gpu: 86 CPUs, 8 GPUs)"]


def test_evaluate_work_counts_samples_requests_and_token_bounds():
    """3 questions x 10 samples in requests of 4 (+1 greedy each): 4 requests per question, 33 samples."""
    work = evaluate_work(["a" * 8, "b" * 9, "c" * 40], samples_per_question=10, greedy=True, max_tokens=5, samples_per_request=4)
    assert work == {"questions": 3, "samples_per_question": 10, "samples": 33, "requests": 12,
                    "prompt_tokens~": (2 + 3 + 10) * 4, "generated_tokens<=": 165}


def test_train_work_steps_follow_the_jobs_rule():
    assert train_work(100, 16, 3, None)["steps"] == 21  # ceil(100/16) = 7 per epoch
    assert train_work(100, 16, 3, 5)["steps"] == 5
    assert train_work(None, 16, 3, None) == {"examples": "unknown", "epochs": 3, "global_batch_size": 16, "steps": "unknown"}


def test_teacher_work_worst_case_cost_and_budget_cap():
    work = teacher_work(10, 1_000_000, 2_000_000, prompt_usd_per_mtok=10, completion_usd_per_mtok=30, budget_usd=50)
    assert (work["worst_case_usd"], work["spend_cap_usd"]) == (70.0, 50)
    assert "spend_cap_usd" not in teacher_work(1, 0, 0, 1, 1, None)


@pytest.mark.parametrize("shape", [NodeShape("x", 0, 0, 0)])
def test_no_nodes_fits_only_an_empty_stage(shape):
    assert unschedulable([], [shape]) is None
    assert unschedulable(bundles(1, 0.5), [shape]) is not None
