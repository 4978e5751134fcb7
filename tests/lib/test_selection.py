"""lib/selection.py: the one answer grouping and the named selection rules, on hand-computed cases (no grader
process: equivalence is injected), and select@k / maj@k of lib/metrics.py built on them."""

import numpy as np
import pytest

from lib.metrics import maj_at_k_all, select_at_k_all
from lib.selection import RULES, group_answers, largest_first, same_canonical, select

ANSWERS = ["5", "7", "5", None, "7", "5", "9"]
BAD, GOOD, PLAIN = "so 2 + 2 = 5 here", "since 3 + 4 = 7 here", "no written arithmetic"


def never(a, b):
    raise AssertionError(f"equivalent({a!r}, {b!r}) called although the canonical forms are equal")


def test_group_answers_compares_each_new_canonical_form_with_group_representatives_only():
    """Equal canonical forms join without a comparison; a new form is compared with each group's first answer
    in order (4 calls here); groups are listed by first member; None joins no group."""
    calls = []

    def half(a, b):
        calls.append((a, b))
        return {a, b} == {"1/2", "0.5"}

    groups = group_answers(["1/2", "0.5", None, "3", "0.50", "1/2"], half, canonical=str)
    assert groups == [[0, 1, 5], [3], [4]]
    assert calls == [("0.5", "1/2"), ("3", "1/2"), ("0.50", "1/2"), ("0.50", "3")]


def test_group_answers_default_canonical_form_is_the_graders_normalization():
    """"3", "$3$" and "\\boxed{3}" normalize to "3" (lib.grading.normalize_answer): one group, no grader call."""
    assert group_answers(["3", "$3$", "\\boxed{3}", None], never) == [[0, 1, 2]]
    assert group_answers(["3", "4"], same_canonical) == [[0], [1]]
    assert largest_first([[0], [1, 2], [3, 4]]) == [[1, 2], [3, 4], [0]]


def choice(name, answers=ANSWERS, **kwargs):
    c = select(name, answers, equivalent=same_canonical, **kwargs)
    return c.index, c.group, c.num_tied


def test_majority_takes_the_largest_group_and_the_earliest_group_on_a_tie():
    assert choice("majority") == (0, [0, 2, 5], 1)
    assert choice("majority", ["7", "8", "8", "7"]) == (0, [0, 3], 2)
    assert choice("majority", [None, None]) == (None, [], 0)


def test_verifier_weighted_sums_scores_per_group_and_returns_the_best_scored_member():
    """Weighted votes: "5" 0.1+0.1+0.2=0.4, "7" 0.9+0.8=1.7, "9" 0.5 -> "7"; its member with score 0.9."""
    assert choice("verifier_weighted", scores=[0.1, 0.9, 0.1, None, 0.8, 0.2, 0.5]) == (1, [1, 4], 1)
    assert choice("verifier_weighted", ["5", "7", "7"], scores=[1.0, 0.25, 0.25]) == (0, [0], 1)  # 1.0 > 0.5
    # equal weighted votes (0.5 each): the larger group
    assert choice("verifier_weighted", ["5", "7", "7"], scores=[0.5, 0.25, 0.25]) == (1, [1, 2], 1)


def test_arithmetic_checked_drops_the_votes_of_samples_with_a_wrong_equation():
    """The three "5" samples write 2 + 2 = 5: "7" (2 checked votes) beats "9" (1) and "5" (0)."""
    texts = [BAD, GOOD, BAD, PLAIN, GOOD, BAD, PLAIN]
    assert choice("arithmetic_checked", texts=texts) == (1, [1, 4], 1)
    # every sample fails the re-check: all votes count again (plain majority)
    assert choice("arithmetic_checked", texts=[BAD] * 7) == (0, [0, 2, 5], 1)


def test_judge_top_groups_prefers_a_group_judged_correct_over_a_larger_one():
    assert choice("judge_top_groups", scores=[0.0, None, None, None, 1.0, None, None]) == (4, [1, 4], 1)
    assert choice("judge_top_groups", scores=[0.0, 0.0, None, None, None, None, 0.0]) == (0, [0, 2, 5], 1)
    # any judged-correct member counts once: the larger "5" (one judged correct) beats "7" (two)
    assert choice("judge_top_groups", ["5", "5", "5", "7", "7"], scores=[0.0, 1.0, 0.0, 1.0, 1.0]) == (1, [0, 1, 2], 1)


def test_random_is_a_seeded_uniform_choice_among_answered_samples():
    picks = [choice("random", seed=s)[0] for s in range(300)]
    assert picks == [choice("random", seed=s)[0] for s in range(300)]  # reproducible
    assert set(picks) == {0, 1, 2, 4, 5, 6}  # never sample 3 (no answer)
    assert max(picks.count(i) for i in set(picks)) < 2 * min(picks.count(i) for i in set(picks))


def test_rules_reject_unknown_names_and_missing_inputs():
    with pytest.raises(ValueError, match="unknown selection rule 'best'.*majority"):
        select("best", ANSWERS, equivalent=same_canonical)
    with pytest.raises(ValueError, match="'verifier_weighted' needs one score per sample"):
        select("verifier_weighted", ANSWERS, equivalent=same_canonical)
    with pytest.raises(ValueError, match="'arithmetic_checked' needs one text per sample"):
        select("arithmetic_checked", ANSWERS, equivalent=same_canonical, texts=["x"])
    assert set(RULES) == {"majority", "verifier_weighted", "arithmetic_checked", "judge_top_groups", "random"}


# ---------------------------------------------------------------- select@k (hand-computed, n = 3)

KEYS, CORRECT = ["5", "5", "7"], [True, True, False]


def test_select_at_k_majority_and_maj_at_k_agree_on_the_hand_case():
    """k=2: {0,1} right, {0,2} and {1,2} ties (1/2 each) -> 2/3."""
    expected = {1: 2 / 3, 2: 2 / 3, 3: 1.0}
    assert select_at_k_all("majority", KEYS, CORRECT, [1, 2, 3]) == pytest.approx(expected, abs=1e-15)
    assert maj_at_k_all(KEYS, CORRECT, [1, 2, 3]) == pytest.approx(expected, abs=1e-15)


def test_select_at_k_arithmetic_checked_hand_case():
    """Both correct samples write 2 + 2 = 5: any subset with the wrong sample goes wrong (k=2: 1/3, k=3: 0)."""
    got = select_at_k_all("arithmetic_checked", KEYS, CORRECT, [1, 2, 3], texts=[BAD, BAD, GOOD])
    assert got == pytest.approx({1: 2 / 3, 2: 1 / 3, 3: 0.0}, abs=1e-15)


def test_select_at_k_verifier_weighted_and_judge_hand_cases():
    got = select_at_k_all("verifier_weighted", KEYS, CORRECT, [1, 2, 3], scores=[0.2, 0.2, 0.9])
    assert got == pytest.approx({1: 2 / 3, 2: 1 / 3, 3: 0.0}, abs=1e-15)
    # judged: sample 1 correct, sample 2 wrong, sample 0 unjudged. k=2: {0,1} 1, {0,2} tie 1/2, {1,2} 1 -> 5/6
    got = select_at_k_all("judge_top_groups", KEYS, CORRECT, [1, 2, 3], scores=[None, 1.0, 0.0])
    assert got == pytest.approx({1: 2 / 3, 2: 5 / 6, 3: 1.0}, abs=1e-15)


def test_select_at_k_random_is_pass_ratio_at_one_and_follows_its_seeded_draws():
    u = np.random.default_rng(7).random(3)  # the rule's seeded per-sample keys: the highest one is chosen
    got = select_at_k_all("random", KEYS, CORRECT, [1, 2], seed=7)
    assert got[1] == pytest.approx(2 / 3, abs=1e-15)
    assert got[2] == pytest.approx((1 + (u[0] > u[2]) + (u[1] > u[2])) / 3, abs=1e-15)


def test_maj_at_k_merges_equivalent_wrong_answers_only_when_told():
    """Wrong "0.5" and "1/2" split their votes by canonical string (3-way tie, 1/3) unless `equivalent`
    merges them (2 wrong votes beat 1 right: 0)."""
    keys, correct = ["0.5", "1/2", "3"], [False, False, True]
    assert maj_at_k_all(keys, correct, [3]) == {3: pytest.approx(1 / 3, abs=1e-15)}
    merged = maj_at_k_all(keys, correct, [3], equivalent=lambda a, b: {a, b} == {"0.5", "1/2"})
    assert merged == {3: 0.0}


@pytest.mark.parametrize("seed", range(5))
def test_majority_select_at_k_equals_maj_at_k_on_both_estimator_paths(seed):
    rng = np.random.default_rng(seed)
    n = 300
    keys = [None if rng.random() < 0.1 else str(rng.integers(0, 5)) for _ in range(n)]
    correct = [k == "0" for k in keys]
    ks = [1, 2, 4, 64, 300]
    assert select_at_k_all("majority", keys, correct, ks, seed=seed) == maj_at_k_all(keys, correct, ks, seed=seed)
