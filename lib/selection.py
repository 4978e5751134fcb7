"""Answer grouping and test-time selection rules: one implementation behind maj@k / select@k
(``lib/metrics.py``), synthesis voting (:func:`vote`) and Serve's best-of-N (``serve/best_of_n.py``).

**Grouping** (:func:`group_answers`). A sample without an answer (None) joins no group. Answers with the
same canonical form (``canonical``, default :func:`lib.grading.normalize_answer`) share a group with no
comparison (the fast path). A new canonical form is compared, by ``equivalent(answer, representative)``
(default :func:`lib.grading.is_equivalent`, the killable grader process), with each group's first answer
in order and joins the first that matches, else starts a group. Groups are listed by first member. Pass
``equivalent=same_canonical`` to group by canonical forms alone (no grader process).

**Rules** (:data:`RULES`). A rule is a pure function of one question's samples (:class:`Samples`: extracted
answers, optional per-sample scores, optional texts, a seed) returning :class:`Votes`: per-sample vote
columns. On a set of samples (all N in Serve, one k-subset in select@k) each group's votes are reduced per
column (``how="sum"``, or ``"max"``) and groups are compared column by column (lexicographically); groups
with no member in the set do not take part. **Tie rule:** the groups still tied after the last column are
*the tied top groups*. :func:`select` (Serve, synthesis) takes the earliest of them (smallest first member);
select@k and maj@k score a set by the expectation of a uniform choice among them (``1/t`` when ``t`` are
tied and one is correct). The chosen sample of a group is its first member with the highest vote columns.
No sample with an answer: no choice (None).

Adding a rule: one function ``(Samples) -> Votes`` and one line in :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lib.error_analysis import arithmetic_label

JUDGED_CORRECT = 0.5  # a judge score >= this is a "correct" verdict (True -> 1.0, False -> 0.0)


def same_canonical(a: str, b: str) -> bool:
    """The ``equivalent`` that never merges different canonical forms: group by canonical form alone."""
    return False


def _grader_equivalent(a: str, b: str) -> bool:
    from lib.grading import is_equivalent

    return is_equivalent(a, b)


def _normalize(answer: str) -> str:
    from lib.grading import normalize_answer

    return normalize_answer(answer)


def group_answers(answers: Sequence[str | None], equivalent: Callable[[str, str], bool] | None = None,
                  canonical: Callable[[str], str] | None = None) -> list[list[int]]:
    """Sample indices per group of equivalent answers, groups in order of first member (module docstring)."""
    equivalent = equivalent or _grader_equivalent
    canonical = canonical or _normalize
    group_of: dict[str, int] = {}  # canonical form -> group
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        key = canonical(answer)
        if key not in group_of:
            group_of[key] = next((g for g, members in enumerate(groups) if equivalent(answer, answers[members[0]])),
                                 len(groups))
            if group_of[key] == len(groups):
                groups.append([])
        groups[group_of[key]].append(i)
    return groups


def largest_first(groups: list[list[int]]) -> list[list[int]]:
    """Groups sorted by size, ties by first member (the order Serve and synthesis report)."""
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def group_ids(groups: Sequence[Sequence[int]], num_samples: int) -> np.ndarray:
    """Sample -> its group's position in ``groups``; -1 for samples in no group."""
    ids = np.full(num_samples, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        ids[list(members)] = g
    return ids


# ------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Samples:
    """One question's samples as a rule sees them."""

    answers: Sequence[str | None]
    scores: Sequence[float | None] | None = None  # verifier / judge score per sample (None: not scored)
    texts: Sequence[str] | None = None  # full responses (for rules that read the working)
    seed: int = 0


@dataclass(frozen=True)
class Votes:
    """``columns[i]``: sample i's votes, one value per column, compared in column order; ``how`` reduces a
    group's members per column ("sum" or "max"; one name for every column, or one per column)."""

    columns: np.ndarray  # (num_samples, num_columns)
    how: str | tuple[str, ...] = "sum"


def _scores(s: Samples, rule: str) -> np.ndarray:
    if s.scores is None or len(s.scores) != len(s.answers):
        raise ValueError(f"selection rule {rule!r} needs one score per sample (scores=...)")
    return np.array([0.0 if x is None else float(x) for x in s.scores])


def majority(s: Samples) -> Votes:
    """One vote per sample with an answer: the largest group."""
    return Votes(np.ones((len(s.answers), 1)))


def verifier_weighted(s: Samples) -> Votes:
    """Votes weighted by the per-sample score (None counts 0); equal weighted votes: more samples wins."""
    return Votes(np.stack([_scores(s, "verifier_weighted"), np.ones(len(s.answers))], axis=1))


def arithmetic_checked(s: Samples) -> Votes:
    """Samples whose written arithmetic fails ``lib.error_analysis``'s re-check lose their vote; groups
    tied on checked votes (or a set where every sample fails) fall back to all votes."""
    if s.texts is None or len(s.texts) != len(s.answers):
        raise ValueError("selection rule 'arithmetic_checked' needs one text per sample (texts=...)")
    checked = [float(arithmetic_label(t or "") != "calculation") for t in s.texts]
    return Votes(np.stack([np.array(checked), np.ones(len(s.answers))], axis=1))


def judge_top_groups(s: Samples) -> Votes:
    """Serve's verifier path: the largest group holding a sample judged correct (score >= JUDGED_CORRECT;
    Serve judges the first member of its largest groups), else the majority. Groups rank by whether some
    member is judged correct, then by size."""
    judged = (_scores(s, "judge_top_groups") >= JUDGED_CORRECT).astype(np.float64)
    return Votes(np.stack([judged, np.ones(len(s.answers))], axis=1), how=("max", "sum"))


def random_choice(s: Samples) -> Votes:
    """Baseline: a uniformly random sample among those with an answer (seeded by ``Samples.seed``)."""
    return Votes(np.random.default_rng(s.seed).random((len(s.answers), 1)), how="max")


RULES: dict[str, Callable[[Samples], Votes]] = {
    "majority": majority,
    "verifier_weighted": verifier_weighted,
    "arithmetic_checked": arithmetic_checked,
    "judge_top_groups": judge_top_groups,
    "random": random_choice,
}


NEEDS_TEXTS = frozenset({"arithmetic_checked"})  # rules that read each sample's full response
NEEDS_SCORES = frozenset({"verifier_weighted", "judge_top_groups"})  # rules that need a per-sample score


def rule(name: str) -> Callable[[Samples], Votes]:
    """The rule registered as ``name``; a ValueError naming the known rules otherwise."""
    if name not in RULES:
        raise ValueError(f"unknown selection rule {name!r}; known: {sorted(RULES)}")
    return RULES[name]


# -------------------------------------------------------------------------------------- choosing


def tied_top_groups(ids: np.ndarray, votes: Votes, subsets: np.ndarray) -> np.ndarray:
    """(num_sets, num_groups) bool: the tied top groups of each row of ``subsets`` (sample indices)."""
    num_sets = subsets.shape[0]
    num_groups = max(int(ids.max(initial=-1)) + 1, 1)
    g = ids[subsets]
    valid = g >= 0
    flat = (np.arange(num_sets)[:, None] * num_groups + np.where(valid, g, 0))[valid]
    size = num_sets * num_groups
    mask = (np.bincount(flat, minlength=size) > 0).reshape(num_sets, num_groups)
    hows = (votes.how,) * votes.columns.shape[1] if isinstance(votes.how, str) else votes.how
    for column, how in zip(votes.columns.T, hows, strict=True):
        weights = column[subsets][valid]
        if how == "sum":
            reduced = np.bincount(flat, weights=weights, minlength=size)
        elif how == "max":
            reduced = np.full(size, -np.inf)
            np.maximum.at(reduced, flat, weights)
        else:
            raise ValueError(f"unknown vote reduction {how!r}")
        values = np.where(mask, reduced.reshape(num_sets, num_groups), -np.inf)
        mask &= values == values.max(axis=1, keepdims=True)
    return mask


@dataclass(frozen=True)
class Choice:
    index: int | None  # the chosen sample (None: no sample has an answer)
    group: list[int]  # its group's members ([] when none)
    num_tied: int  # tied top groups (the earliest was taken)


def select(name: str, answers: Sequence[str | None], *, groups: Sequence[Sequence[int]] | None = None,
           scores: Sequence[float | None] | None = None, texts: Sequence[str] | None = None,
           equivalent: Callable[[str, str], bool] | None = None, seed: int = 0) -> Choice:
    """Apply rule ``name`` to one question's samples. ``groups`` (any order) skips the grouping step."""
    votes = rule(name)(Samples(answers, scores, texts, seed))
    groups = [list(g) for g in (group_answers(answers, equivalent) if groups is None else groups)]
    mask = tied_top_groups(group_ids(groups, len(answers)), votes, np.arange(len(answers))[None, :])[0]
    tied = [groups[g] for g in np.flatnonzero(mask)]
    if not tied:
        return Choice(None, [], 0)
    group = min(tied, key=lambda members: min(members))
    index = max(sorted(group), key=lambda i: (tuple(votes.columns[i]), -i))
    return Choice(index, group, len(tied))


@dataclass(frozen=True)
class Vote:
    label: str | None  # the majority answer (None when no solution has an answer)
    votes: int  # solutions in the majority group
    agreement: float  # votes / solutions requested
    groups: list[list[int]]  # solution indices per group of equivalent answers, largest first


def vote(answers: list[str | None], equivalent: Callable[[str, str], bool], num_requested: int | None = None) -> Vote:
    """Synthesis' answer-consistency vote: group equivalent answers (:func:`group_answers`, groups largest
    first) and pick the largest group (the ``majority`` rule of :func:`select`); ties go to the group whose
    first member came first.
    ``agreement`` divides by ``num_requested`` (failed requests count as disagreeing), default ``len(answers)``."""
    groups = largest_first(group_answers(answers, equivalent))
    total = num_requested if num_requested is not None else len(answers)
    chosen = select("majority", answers, groups=groups)
    if chosen.index is None or total == 0:
        return Vote(None, 0, 0.0, groups)
    return Vote(answers[chosen.index], len(chosen.group), len(chosen.group) / total, groups)
