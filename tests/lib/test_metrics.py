"""Estimators against brute-force enumeration on small cases, and exact hand-computed values."""

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from lib import metrics
from lib.metrics import aggregate, bootstrap_ci, k_values, maj_at_k, maj_at_k_all, pass_at_k, question_metrics


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_maj_at_k(keys, correct, k) -> Fraction:
    """Exact expectation, over all k-subsets and a uniform tie-break, of majority-vote correctness."""
    total, count = Fraction(0), 0
    for subset in itertools.combinations(range(len(keys)), k):
        votes = Counter("CORRECT" if correct[i] else keys[i] for i in subset if correct[i] or keys[i] is not None)
        count += 1
        if not votes:
            continue
        top = max(votes.values())
        tied = [a for a, v in votes.items() if v == top]
        total += Fraction(int("CORRECT" in tied), len(tied))
    return total / count


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_matches_enumeration(n):
    """The stable product form equals counting subsets for every c and k."""
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_known_values():
    """Hand-computed: n=4, c=1 -> pass@1 = 1/4, pass@2 = 1/2; n=1024, c=0 -> 0; c=n -> 1."""
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(1024, 0, 1024) == 0.0
    assert pass_at_k(1024, 1024, 1) == 1.0
    assert pass_at_k(1024, 1, 1024) == 1.0
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024)
    assert pass_at_k(1024, 3, 512) == pytest.approx(1 - math.comb(1021, 512) / math.comb(1024, 512))


def test_pass_at_k_rejects_bad_arguments():
    """c > n or k > n is a caller bug and raises instead of returning a wrong number."""
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


CASES = [
    # keys, correct
    (["a", "b", "b", "c", None], [True, False, False, False, False]),
    (["a", "a", "b", "b", "c", "c"], [True, True, False, False, False, False]),
    ([None, None, "x", "y"], [False, False, True, False]),
    (["5", "5", "7", "7", "7", "9", None, "5"], [True, True, False, False, False, False, False, True]),
    ([None, None, None], [False, False, False]),
]


@pytest.mark.parametrize("keys,correct", CASES)
def test_maj_at_k_exact_path_matches_enumeration(keys, correct):
    """Small n uses full enumeration: equal to the brute-force expectation for every k."""
    for k in range(1, len(keys) + 1):
        assert maj_at_k(keys, correct, k) == pytest.approx(float(brute_maj_at_k(keys, correct, k)), abs=1e-12)


@pytest.mark.parametrize("keys,correct", CASES[:4])
def test_maj_at_k_sampled_path_close_to_enumeration(monkeypatch, keys, correct):
    """Forcing the Monte Carlo path (limit 0) gives the brute-force value within 0.05 with 4000 subsets."""
    monkeypatch.setattr(metrics, "MAJ_EXACT_LIMIT", 0)
    for k in range(1, len(keys) + 1):
        est = maj_at_k(keys, correct, k, num_subsets=4000, seed=1)
        assert est == pytest.approx(float(brute_maj_at_k(keys, correct, k)), abs=0.05)


def test_maj_at_k_tie_rule_and_known_values():
    """Two answers tied 1-1, one correct: 1/2. Correct samples with different keys form one group."""
    assert maj_at_k(["a", "b"], [True, False], 2) == 0.5
    assert maj_at_k(["1/2", "0.5", "3"], [True, True, False], 3) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    # k = n: the plain majority of all samples, no estimation involved.
    keys = ["7"] * 600 + ["5"] * 424
    assert maj_at_k(keys, [False] * 600 + [True] * 424, 1024) == 0.0
    assert maj_at_k(keys, [True] * 600 + [False] * 424, 1024) == 1.0


def test_maj_at_k_sampled_is_reproducible():
    """The seeded estimate is the same on every call (results files must be reproducible)."""
    keys = [str(i % 7) for i in range(300)]
    correct = [i % 7 == 0 for i in range(300)]
    a = maj_at_k_all(keys, correct, [4, 16, 64], seed=3)
    b = maj_at_k_all(keys, correct, [4, 16, 64], seed=3)
    assert a == b


def test_k_values():
    """Powers of two up to n, plus n itself."""
    assert k_values(1) == [1]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(12) == [1, 2, 4, 8, 12]
    assert k_values(1024)[-1] == 1024 and len(k_values(1024)) == 11


def test_bootstrap_ci_brackets_mean_and_is_degenerate_for_constant_values():
    """A constant sample has a zero-width interval; a mixed one brackets its mean."""
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0.0] * 50 + [1.0] * 50)
    assert lo < 0.5 < hi
    assert 0.35 < lo and hi < 0.65


def test_aggregate_averages_questions():
    """Two questions: n=4 with c=4 and c=0 -> PassRatio 0.5, pass@4 0.5, greedy 1/2, exact CI keys."""
    ks = [1, 2, 4]
    q1 = question_metrics(["3"] * 4, [True] * 4, ks)
    q2 = question_metrics(["1", "2", None, "2"], [False] * 4, ks)
    out = aggregate([q1, q2], [True, False])
    assert out["num_questions"] == 2
    assert out["samples_per_question"] == 4
    assert out["greedy_pass@1"] == 0.5
    assert out["pass@k"] == {"1": 0.5, "2": 0.5, "4": 0.5}
    assert out["maj@k"] == {"1": 0.5, "2": 0.5, "4": 0.5}
    assert out["pass_ratio"] == 0.5
    assert set(out["ci95"]) == {"greedy_pass@1", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4", "pass_ratio"}



def test_maj_at_k_is_zero_when_no_sample_has_an_answer_on_both_estimator_paths():
    """A question whose samples all lack an answer (a tiny model, a short max_tokens) scores maj@k = 0 for
    every k, on the exact path (small C(n,k)) and on the sampled one (large C(n,k)), instead of crashing."""
    from lib.metrics import maj_at_k_all

    assert maj_at_k_all([None] * 4, [False] * 4, [1, 2, 4]) == {1: 0.0, 2: 0.0, 4: 0.0}
    assert maj_at_k_all([None] * 1000, [False] * 1000, [1, 512, 1000]) == {1: 0.0, 512: 0.0, 1000: 0.0}


# ------------------------------------------------------------------------- adaptive sampling (issue 15)


def test_adaptive_pass_at_k_hand_case():
    """First successes at 0 and 2 and none (all 4 drawn): pass@1 = pass@2 = 1/3, pass@3 = pass@4 = 2/3; the
    CI of k is the bootstrap CI of the per-question indicators 1[first < k]."""
    from lib.metrics import adaptive_pass_at_k

    out = adaptive_pass_at_k([0, 2, None], [1, 4, 4], 4, seed=5)
    assert out["pass@k"] == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 4: 2 / 3}, abs=1e-15)
    assert out["ci95"][1] == pytest.approx(list(bootstrap_ci([1.0, 0.0, 0.0], seed=5)), abs=1e-12)
    assert out["ci95"][3] == pytest.approx(list(bootstrap_ci([1.0, 1.0, 0.0], seed=5)), abs=1e-12)


def test_adaptive_pass_at_k_refuses_prefixes_that_cannot_answer_every_k():
    from lib.metrics import adaptive_pass_at_k

    with pytest.raises(ValueError, match="question 1: no success among 2 drawn samples, but n=4"):
        adaptive_pass_at_k([0, None], [1, 2], 4)
    with pytest.raises(ValueError, match="question 0: need 0 <= first < num_drawn <= n, got first=3, num_drawn=3"):
        adaptive_pass_at_k([3], [3], 4)


def test_adaptive_num_drawn_stops_after_the_chunk_holding_the_first_success():
    from lib.metrics import adaptive_num_drawn, first_success

    assert first_success([False, False, True, True]) == 2 and first_success([False] * 3) is None
    assert [adaptive_num_drawn(f, 64, 8) for f in (0, 7, 8, 63, None)] == [8, 8, 16, 64, 64]
    assert adaptive_num_drawn(50, 60, 48) == 60  # the last chunk is cut at n


def test_adaptive_estimate_from_first_success_prefixes_agrees_with_the_full_estimator():
    """A synthetic full run (400 questions x 64 i.i.d. samples, a strong model's mix of per-question
    accuracies): for every k in 1..64, the full unbiased pass@k lies in the CI of the prefix-based estimate,
    which reads a fraction of the rows."""
    from lib.metrics import adaptive_num_drawn, adaptive_pass_at_k, first_success

    rng = np.random.default_rng(0)
    n, num_questions = 64, 400
    p = np.concatenate([np.zeros(40), rng.uniform(0.01, 0.2, 80), rng.uniform(0.2, 1.0, 280)])
    runs = rng.random((num_questions, n)) < p[:, None]
    firsts = [first_success(row.tolist()) for row in runs]
    drawn = [adaptive_num_drawn(f, n, 4) for f in firsts]
    out = adaptive_pass_at_k(firsts, drawn, n)
    for k in range(1, n + 1):
        full = float(np.mean([pass_at_k(n, int(row.sum()), k) for row in runs]))
        lo, hi = out["ci95"][k]
        assert lo <= full <= hi, (k, full, lo, hi)
    assert sum(drawn) < 0.25 * n * num_questions


# ------------------------------------------------------------------------- pass@k at every k (issue 15)


def test_pass_at_every_k_equals_the_product_form_estimator_at_every_k():
    """The cumulative-log curve equals pass_at_k for every k and c (including c = 0, c = n and k > n - c,
    where it is exactly 1) for n = 1..12 and n = 1024 at spot values."""
    from lib.metrics import pass_at_every_k

    for n in range(1, 13):
        for c in range(n + 1):
            assert pass_at_every_k(n, c) == pytest.approx([pass_at_k(n, c, k) for k in range(1, n + 1)], abs=1e-12)
    curve = pass_at_every_k(1024, 3)
    assert [curve[k - 1] for k in (1, 100, 1022, 1024)] == pytest.approx([pass_at_k(1024, 3, k) for k in (1, 100, 1022, 1024)], abs=1e-12)
    assert curve[1021] == 1.0


def test_aggregate_stores_pass_at_every_k_as_the_mean_curve():
    """n = 4, c = 1 and c = 4: pass@every_k = mean of (1/4, 1/2, 3/4, 1) and 1 -> (5/8, 3/4, 7/8, 1); the reported
    k keep their CIs, the curve has none."""
    q1 = question_metrics(["1", "2", "2", "2"], [True, False, False, False], [1, 2, 4])
    q2 = question_metrics(["1"] * 4, [True] * 4, [1, 2, 4])
    out = aggregate([q1, q2], None)
    assert out["pass@every_k"] == pytest.approx([5 / 8, 3 / 4, 7 / 8, 1.0], abs=1e-15)
    assert [out["pass@every_k"][k - 1] for k in (1, 2, 4)] == pytest.approx([out["pass@k"][str(k)] for k in (1, 2, 4)], abs=1e-15)
