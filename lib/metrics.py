"""Sampling metrics: pass@k, maj@k, PassRatio, greedy pass@1, bootstrap confidence intervals.

Definitions (``../shared/docs/paper.md``), for a question with ``n`` samples of which ``c`` are correct:

- ``pass@k`` is the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``, computed in
  the stable product form ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``. ``pass@n`` is the oracle "best of n".
- ``PassRatio@n`` is ``c / n``: the expected accuracy of one random sample.
- ``maj@k`` is the expected accuracy of majority voting over a uniformly random k-subset of the ``n``
  samples. Votes are cast by answer group (``key``); samples without an answer do not vote; a subset
  where nobody voted scores 0. **Tie rule:** ties are broken uniformly at random, so a subset whose
  top vote count is shared by ``t`` groups, one of them correct, scores ``1 / t`` (the expectation of
  the random tie-break, which removes its variance). The expectation over subsets is exact (full
  enumeration) when ``C(n, k) <= MAJ_EXACT_LIMIT``, and otherwise a Monte Carlo mean over
  ``num_subsets`` random subsets from a seeded generator, so results are reproducible.
- Every headline number comes with a percentile bootstrap CI over questions (seeded).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

MAJ_EXACT_LIMIT = 5_000
MAJ_NUM_SUBSETS = 1_000
BOOTSTRAP_RESAMPLES = 1_000
TIE_RULE = "uniform random tie-break, scored by its expectation (1/t for t tied groups, one correct)"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question with ``n`` samples, ``c`` correct (Chen et al. 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_ratio(n: int, c: int) -> float:
    """Fraction of correct samples, ``c / n``."""
    if n <= 0:
        raise ValueError(f"need n >= 1, got n={n}")
    return c / n


def k_values(n: int) -> list[int]:
    """The k reported for ``n`` samples: powers of two up to ``n``, and ``n`` itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    if ks[-1] != n:
        ks.append(n)
    return ks


def _group_ids(keys: Sequence[str | None], correct: Sequence[bool]) -> np.ndarray:
    """Sample -> answer group: 0 for every correct sample, -1 for no answer, 1.. per distinct wrong key."""
    if len(keys) != len(correct):
        raise ValueError(f"keys and correct differ in length: {len(keys)} vs {len(correct)}")
    group_of: dict[str, int] = {}
    ids = np.empty(len(keys), dtype=np.int64)
    for i, (key, ok) in enumerate(zip(keys, correct)):
        ids[i] = 0 if ok else -1 if key is None else group_of.setdefault(key, len(group_of) + 1)
    return ids


def _maj_exact(ids: np.ndarray, k: int) -> float:
    scores = []
    for subset in itertools.combinations(ids.tolist(), k):
        votes = Counter(g for g in subset if g >= 0)
        if not votes:
            scores.append(0.0)
            continue
        top = max(votes.values())
        tied = [g for g, v in votes.items() if v == top]
        scores.append((0 in tied) / len(tied))
    return float(np.mean(scores))


def _maj_sampled(ids: np.ndarray, k: int, permutations: np.ndarray) -> float:
    """Mean subset score over the first ``k`` columns of each row of ``permutations``."""
    num_subsets = permutations.shape[0]
    # column 0: no answer (shifted by one), 1: correct, 2..: wrong groups; the correct column exists even when
    # no sample has an answer
    num_groups = max(int(ids.max()), 0) + 2
    shifted = ids[permutations[:, :k]] + 1
    flat = (np.arange(num_subsets)[:, None] * num_groups + shifted).ravel()
    votes = np.bincount(flat, minlength=num_subsets * num_groups).reshape(num_subsets, num_groups)[:, 1:]
    top = votes.max(axis=1)
    num_tied = (votes == top[:, None]).sum(axis=1)
    scores = np.where((top > 0) & (votes[:, 0] == top), 1.0 / num_tied, 0.0)
    return float(scores.mean())


def maj_at_k_all(
    keys: Sequence[str | None],
    correct: Sequence[bool],
    ks: Sequence[int],
    *,
    num_subsets: int = MAJ_NUM_SUBSETS,
    seed: int = 0,
) -> dict[int, float]:
    """maj@k for one question and every k in ``ks`` (see the module docstring for estimator and tie rule).

    ``keys[i]`` is sample i's answer group (None: no answer); ``correct[i]`` its verdict. All correct
    samples form one group whatever their keys, since each is equivalent to the gold answer. Sampled
    estimates share one set of random permutations: a permutation's first k entries are a uniform k-subset.
    """
    ids = _group_ids(keys, correct)
    n = len(ids)
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    permutations = None
    out = {}
    for k in ks:
        if math.comb(n, k) <= MAJ_EXACT_LIMIT:
            out[k] = _maj_exact(ids, k)
            continue
        if permutations is None:
            permutations = np.random.default_rng(seed).random((num_subsets, n)).argsort(axis=1)
        out[k] = _maj_sampled(ids, k, permutations)
    return out


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int, **kwargs) -> float:
    """maj@k for one question and one k; see :func:`maj_at_k_all`."""
    return maj_at_k_all(keys, correct, [k], **kwargs)[k]


def bootstrap_ci(
    values: Sequence[float], *, num_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-question ``values`` (resampling questions)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(num_resamples, arr.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def question_metrics(keys: Sequence[str | None], correct: Sequence[bool], ks: Sequence[int], *, seed: int = 0) -> dict:
    """Per-question values of every metric: ``{"n", "c", "pass_ratio", "pass@k": {k: v}, "maj@k": {k: v}}``."""
    n, c = len(correct), int(sum(bool(x) for x in correct))
    return {
        "n": n,
        "c": c,
        "pass_ratio": pass_ratio(n, c),
        "pass@k": {k: pass_at_k(n, c, k) for k in ks},
        "maj@k": maj_at_k_all(keys, correct, ks, seed=seed),
    }


def aggregate(per_question: Sequence[dict], greedy_correct: Sequence[bool] | None, *, seed: int = 0) -> dict:
    """Average per-question metrics into one group's report, each with a 95% bootstrap CI.

    Returns ``{"num_questions", "samples_per_question", "greedy_pass@1", "pass@k", "maj@k",
    "pass_ratio", "ci95"}`` with k keys as strings; ``ci95`` maps each metric name
    (``"pass@4"``, ``"maj@4"``, ``"pass_ratio"``, ``"greedy_pass@1"``) to ``[lo, hi]``.
    """
    if not per_question:
        raise ValueError("no questions to aggregate")
    sizes = sorted({q["n"] for q in per_question})
    ks = sorted(set.intersection(*(set(q["pass@k"]) for q in per_question)))
    out: dict = {"num_questions": len(per_question), "samples_per_question": sizes[0] if len(sizes) == 1 else sizes}
    ci: dict[str, list[float]] = {}

    def add(name: str, values: Sequence[float]) -> float:
        ci[name] = list(bootstrap_ci(values, seed=seed))
        return float(np.mean(values))

    out["greedy_pass@1"] = add("greedy_pass@1", [float(x) for x in greedy_correct]) if greedy_correct else None
    out["pass@k"] = {str(k): add(f"pass@{k}", [q["pass@k"][k] for q in per_question]) for k in ks}
    out["maj@k"] = {str(k): add(f"maj@{k}", [q["maj@k"][k] for q in per_question]) for k in ks}
    out["pass_ratio"] = add("pass_ratio", [q["pass_ratio"] for q in per_question])
    out["ci95"] = ci
    return out
