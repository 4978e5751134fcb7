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
- ``select@k`` (:func:`select_at_k_all`) is maj@k for any selection rule of ``lib.selection.RULES``: the
  same k-subsets, estimator and tie rule; maj@k is ``select@k`` of ``majority``. Answer groups come from
  ``lib.selection.group_answers`` over the stored canonical strings: one group per distinct string unless
  an ``equivalent`` callable (e.g. a grader's) merges them.
- Adaptive sampling (:func:`adaptive_pass_at_k`): from each question's first-success index in an i.i.d.
  sample stream, ``1[first < k]`` is an unbiased pass@k for every ``k <= n``.
- Every headline number comes with a percentile bootstrap CI over questions (seeded).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from lib.selection import Samples, Votes, group_answers, group_ids, majority, rule, same_canonical, tied_top_groups

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


def pass_at_every_k(n: int, c: int) -> np.ndarray:
    """pass@k for k = 1..n (index k-1) of one question: ``1 - prod_{j<k} (1 - c/(n-j))``, the same estimator
    as :func:`pass_at_k` from one cumulative sum of logs (O(n) for all k)."""
    if not 0 <= c <= n or n < 1:
        raise ValueError(f"need 0 <= c <= n and n >= 1, got n={n}, c={c}")
    with np.errstate(divide="ignore"):
        # term j is log((n-c-j)/(n-j)): -inf from j = n-c on (every k-subset holds a correct sample)
        log_all_wrong = np.cumsum(np.log1p(np.maximum(-c / np.arange(n, 0, -1, dtype=np.float64), -1.0)))
    return 1.0 - np.exp(log_all_wrong)


def pass_curve(per_question: Sequence[dict]) -> list[float]:
    """Mean over questions of pass@k for every k = 1..n (list index k-1); one curve per distinct (n, c)."""
    sizes = {q["n"] for q in per_question}
    if len(sizes) != 1:
        raise ValueError(f"questions have different sample counts {sorted(sizes)}")
    counts = np.bincount([q["c"] for q in per_question], minlength=sizes.pop() + 1)
    curves = {c: pass_at_every_k(len(counts) - 1, c) for c in np.flatnonzero(counts)}
    return [float(v) for v in sum(counts[c] * curve for c, curve in curves.items()) / counts.sum()]


def k_values(n: int) -> list[int]:
    """The k reported for ``n`` samples: powers of two up to ``n``, and ``n`` itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    if ks[-1] != n:
        ks.append(n)
    return ks


def _group_ids(keys: Sequence[str | None], correct: Sequence[bool],
               equivalent: Callable[[str, str], bool] | None = None) -> np.ndarray:
    """Sample -> answer group: 0 for every correct sample, -1 for no answer, 1.. per group of wrong keys.

    Wrong keys are grouped by :func:`lib.selection.group_answers` on the keys themselves (canonical
    strings): equal keys always share a group; different keys merge only when ``equivalent`` says so
    (default: never, i.e. one group per distinct key, so no grader process is needed)."""
    if len(keys) != len(correct):
        raise ValueError(f"keys and correct differ in length: {len(keys)} vs {len(correct)}")
    wrong = [None if ok else key for key, ok in zip(keys, correct)]
    ids = group_ids(group_answers(wrong, equivalent or same_canonical, canonical=str), len(keys)) + 1
    ids[ids == 0] = -1
    ids[np.asarray(correct, dtype=bool)] = 0
    return ids


def _subsets(n: int, k: int, permutations: np.ndarray | None) -> np.ndarray:
    """All k-subsets (lexicographic) or, given random permutations, their first k columns."""
    if permutations is None:
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    return permutations[:, :k]


def _select_all(ids: np.ndarray, votes: Votes, ks: Sequence[int], num_subsets: int, seed: int) -> dict[int, float]:
    """Mean over k-subsets (exact or sampled) of the expected correctness of the rule's tied top groups."""
    n = len(ids)
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    permutations = None
    out = {}
    for k in ks:
        exact = math.comb(n, k) <= MAJ_EXACT_LIMIT
        if not exact and permutations is None:
            permutations = np.random.default_rng(seed).random((num_subsets, n)).argsort(axis=1)
        mask = tied_top_groups(ids, votes, _subsets(n, k, None if exact else permutations))
        num_tied = mask.sum(axis=1)
        out[k] = float(np.where(num_tied > 0, mask[:, 0] / np.maximum(num_tied, 1), 0.0).mean())
    return out


def maj_at_k_all(
    keys: Sequence[str | None],
    correct: Sequence[bool],
    ks: Sequence[int],
    *,
    num_subsets: int = MAJ_NUM_SUBSETS,
    seed: int = 0,
    equivalent: Callable[[str, str], bool] | None = None,
) -> dict[int, float]:
    """maj@k for one question and every k in ``ks`` (see the module docstring for estimator and tie rule).

    ``keys[i]`` is sample i's answer group (None: no answer); ``correct[i]`` its verdict. All correct
    samples form one group whatever their keys, since each is equivalent to the gold answer; wrong keys
    group as in :func:`_group_ids`. Sampled estimates share one set of random permutations: a
    permutation's first k entries are a uniform k-subset. Equals ``select_at_k_all("majority", ...)``.
    """
    ids = _group_ids(keys, correct, equivalent)
    return _select_all(ids, majority(Samples(list(keys))), ks, num_subsets, seed)


def select_at_k_all(
    rule_name: str,
    keys: Sequence[str | None],
    correct: Sequence[bool],
    ks: Sequence[int],
    *,
    scores: Sequence[float | None] | None = None,
    texts: Sequence[str] | None = None,
    num_subsets: int = MAJ_NUM_SUBSETS,
    seed: int = 0,
    equivalent: Callable[[str, str], bool] | None = None,
) -> dict[int, float]:
    """select@k of selection rule ``rule_name`` (``lib.selection.RULES``) for one question and every k:
    the expected accuracy of the rule applied to a uniformly random k-subset of the samples, with the
    estimator (exact / seeded Monte Carlo, same subsets as maj@k) and tie rule of maj@k. The rule's votes
    come from all n samples' ``scores`` / ``texts`` (each sample's votes do not depend on the subset)."""
    ids = _group_ids(keys, correct, equivalent)
    return _select_all(ids, rule(rule_name)(Samples(list(keys), scores, texts, seed)), ks, num_subsets, seed)


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


def question_metrics(keys: Sequence[str | None], correct: Sequence[bool], ks: Sequence[int], *, seed: int = 0,
                     selection: Sequence[str] = (), texts: Sequence[str] | None = None,
                     scores: Sequence[float | None] | None = None) -> dict:
    """Per-question values of every metric: ``{"n", "c", "pass_ratio", "pass@k": {k: v}, "maj@k": {k: v}}``,
    plus ``"select@k": {rule: {k: v}}`` for each rule in ``selection`` (``texts`` / ``scores``: per sample,
    for the rules that read them)."""
    n, c = len(correct), int(sum(bool(x) for x in correct))
    out = {
        "n": n,
        "c": c,
        "pass_ratio": pass_ratio(n, c),
        "pass@k": {k: pass_at_k(n, c, k) for k in ks},
        "maj@k": maj_at_k_all(keys, correct, ks, seed=seed),
    }
    if selection:
        out["select@k"] = {name: select_at_k_all(name, keys, correct, ks, scores=scores, texts=texts, seed=seed)
                           for name in selection}
    return out


def aggregate(per_question: Sequence[dict], greedy_correct: Sequence[bool] | None, *, seed: int = 0) -> dict:
    """Average per-question metrics into one group's report, each with a 95% bootstrap CI.

    Returns ``{"num_questions", "samples_per_question", "greedy_pass@1", "pass@k", "maj@k",
    "pass_ratio", "pass@every_k", "ci95"}`` with k keys as strings (``pass@every_k``: pass@k for every k = 1..n,
    list index k-1, no CIs; only when every question has the same n), and ``"select@k": {rule: {k: v}}`` when the questions
    carry it; ``ci95`` maps each metric name (``"pass@4"``, ``"maj@4"``, ``"select@majority@4"``,
    ``"pass_ratio"``, ``"greedy_pass@1"``) to ``[lo, hi]``.
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
    if all("select@k" in q for q in per_question):
        out["select@k"] = {name: {str(k): add(f"select@{name}@{k}", [q["select@k"][name][k] for q in per_question])
                                  for k in ks} for name in per_question[0]["select@k"]}
    out["pass_ratio"] = add("pass_ratio", [q["pass_ratio"] for q in per_question])
    if len(sizes) == 1:
        out["pass@every_k"] = pass_curve(per_question)
    out["ci95"] = ci
    return out


# ------------------------------------------------------------------------------ adaptive sampling


def first_success(correct: Sequence[bool]) -> int | None:
    """Index (``sample_idx`` order) of the first correct sample; None when none is."""
    return next((i for i, ok in enumerate(correct) if ok), None)


def adaptive_num_drawn(first: int | None, n: int, chunk: int) -> int:
    """Samples drawn for one question when sampling stops after the chunk (of ``chunk`` samples) holding
    its first correct sample ``first`` (None: no success, all ``n`` drawn)."""
    if chunk < 1 or n < 1:
        raise ValueError(f"need chunk >= 1 and n >= 1, got chunk={chunk}, n={n}")
    return n if first is None else min(n, (first // chunk + 1) * chunk)


def adaptive_pass_at_k(
    first: Sequence[int | None],
    num_drawn: Sequence[int],
    n: int,
    *,
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """pass@k for every k in 1..n from first-success prefixes of i.i.d. sample streams.

    ``first[q]``: index of question q's first correct sample among its first ``num_drawn[q]`` samples (None:
    none of them). With i.i.d. samples, ``1[first < k]`` ("a correct sample among the first k") is an
    unbiased estimate of question q's pass@k for every ``k <= n``; a question with no success must have
    all ``n`` drawn. Returns ``{"pass@k": {k: mean}, "ci95": {k: [lo, hi]}}`` (k as ints, 1..n) with a
    percentile bootstrap CI over questions (seeded; one resampling shared by all k, as
    :func:`bootstrap_ci` draws it). Less precise than the full estimator :func:`pass_at_k`, which averages
    over all k-subsets of n samples, but it needs only the rows up to the first success.
    """
    if len(first) != len(num_drawn) or not first:
        raise ValueError(f"need one num_drawn per question and >= 1 question, got {len(first)} and {len(num_drawn)}")
    hit = np.empty(len(first), dtype=np.int64)  # k* - 1: the question counts for every k > hit
    for q, (f, m) in enumerate(zip(first, num_drawn)):
        if f is None:
            if m != n:
                raise ValueError(f"question {q}: no success among {m} drawn samples, but n={n} (draw all n)")
            hit[q] = n
        elif not 0 <= f < m <= n:
            raise ValueError(f"question {q}: need 0 <= first < num_drawn <= n, got first={f}, num_drawn={m}, n={n}")
        else:
            hit[q] = f
    num_questions = len(hit)

    def curve(rows: np.ndarray) -> np.ndarray:  # (rows, n): fraction of questions with first < k, k = 1..n
        flat = (rows + (n + 1) * np.arange(rows.shape[0])[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows.shape[0] * (n + 1)).reshape(rows.shape[0], n + 1)[:, :n]
        return np.cumsum(counts, axis=1) / rows.shape[1]

    mean = curve(hit[None, :])[0]
    resampled = hit[np.random.default_rng(seed).integers(0, num_questions, size=(num_resamples, num_questions))]
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(curve(resampled), [alpha, 1.0 - alpha], axis=0)
    return {"pass@k": {k: float(mean[k - 1]) for k in range(1, n + 1)},
            "ci95": {k: [float(lo[k - 1]), float(hi[k - 1])] for k in range(1, n + 1)}}
