"""From stored, graded sample rows to one run's metrics: the entries of ``metrics.json``.

Per dataset (and broken down by level and type where the data has them): number of questions,
samples per question, greedy pass@1, pass@k with CIs and maj@k for k = 1, 2, 4, ..., n (``k_values``), pass@k
without CIs for every k = 1..n (``pass@every_k``, list index k-1), select@k of each
configured selection rule (``lib.selection.RULES``) for the same k, PassRatio, 95% bootstrap CIs over
questions, and the counts of the grading statuses (``lib.grading.STATUSES``), which are reported, never
folded silently into "incorrect" (for pass@k a sample counts as correct only when graded so).

Questions without a gold answer (``Question.answer`` blank, e.g. ``hungarian_exam``) are sampled and stored
with status ``ungraded``; they take no part in the accuracy metrics. A group made only of them is reported
as ``{"graded": false, "num_questions", "samples_per_question", "status_counts", ...}`` (no pass@k), its own
section of ``summary.md``, and never counts towards ``max_error_fraction``.

The estimators are ``lib.metrics`` (pure, per question); this module groups the rows by question and
dataset and averages. ``lib.report`` renders the result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from lib.grading import STATUSES
from lib.metrics import (MAJ_EXACT_LIMIT, MAJ_NUM_SUBSETS, TIE_RULE, adaptive_pass_at_k, aggregate, bootstrap_ci, k_values,
                         question_metrics)
from lib.schemas import METRICS_INPUT_COLUMNS, QUESTION_ID, SAMPLE_IDX, TEXT, MetricsEntry, check_columns
from lib.selection import NEEDS_SCORES, NEEDS_TEXTS, RULES, rule


TEXT_CHUNK = 64  # questions whose sample texts compute_metrics holds at once (64 x 1024 samples x ~1 KB)


class IncompleteRunError(RuntimeError):
    """Some questions lack samples: the run must be resumed before metrics can be computed."""


def _by_question(table: pa.Table, max_idx: int | None,
                 what: str = "samples") -> dict[str, list[tuple[int, str, str | None, str | None]]]:
    """question -> its (sample_idx, status, canonical, text) rows; text None when the table has no ``text``.
    The table must have ``lib.schemas.METRICS_INPUT_COLUMNS`` (a SchemaError naming the missing one otherwise)."""
    check_columns(table.column_names, METRICS_INPUT_COLUMNS, f"metrics: the {what} rows")
    out: dict[str, list[tuple[int, str, str | None, str | None]]] = defaultdict(list)
    cols = [table.column(c).to_pylist() for c in METRICS_INPUT_COLUMNS]
    cols.append(table.column(TEXT).to_pylist() if TEXT in table.column_names else [None] * table.num_rows)
    for qid, idx, status, canonical, text in zip(*cols):
        if max_idx is None or idx < max_idx:
            out[qid].append((idx, status, canonical, text))
    return out


def _groups(questions: list[Any]) -> dict[str, list]:
    """Report groups: each dataset, and its levels and types where the data has them."""
    groups: dict[str, list] = defaultdict(list)
    for q in questions:
        groups[q.dataset].append(q)
        if q.level:
            groups[f"{q.dataset}/level={q.level}"].append(q)
        if q.type:
            groups[f"{q.dataset}/type={q.type}"].append(q)
    return groups


def prefix_first_success(rows: list[tuple]) -> tuple[int | None, int]:
    """(first correct sample_idx, length) of the contiguous stored prefix 0, 1, ... of one question's
    (sample_idx, status, ...) rows: an adaptive run's question is done once this prefix holds a success."""
    first, length = None, 0
    for row in sorted(rows):
        if row[0] != length:
            break
        if first is None and row[1] == "correct":
            first = length
        length += 1
    return first, length


def prefix_first_successes(samples: pa.Table, samples_per_question: int) -> dict[str, tuple[int | None, int]]:
    """question_id -> :func:`prefix_first_success` of its stored rows with sample_idx < samples_per_question."""
    return {qid: prefix_first_success(rows) for qid, rows in _by_question(samples, samples_per_question).items()}


def compute_adaptive_metrics(questions: list[Any], samples: pa.Table, greedy: pa.Table | None, samples_per_question: int,
                             *, seed: int = 0) -> dict:
    """Metrics of a ``stop_at_first_correct`` run: pass@k for every k = 1..n from each question's first
    success (``lib.metrics.adaptive_pass_at_k``); PassRatio, maj@k and select@k need all n samples and
    are ``None`` (not available). Records ``samples_drawn`` vs ``samples_full`` (n x questions). A question
    with no success in fewer than n stored samples raises :class:`IncompleteRunError`."""
    n = samples_per_question
    per_q = _by_question(samples, n)
    greedy_q = _by_question(greedy, None, "greedy") if greedy is not None and greedy.num_rows else {}
    stored = prefix_first_successes(samples, n)
    firsts = {q.id: stored.get(q.id, (None, 0)) for q in questions}
    short = [qid for qid, (first, drawn) in firsts.items() if first is None and drawn < n]
    if short:
        raise IncompleteRunError(f"{len(short)} of {len(questions)} questions have no correct sample and fewer than "
                                 f"{n} samples (first: {short[0]}); rerun the job to resume")
    ks = k_values(n)
    result: dict[str, dict] = {}
    for name, members in _groups(questions).items():
        statuses, greedy_statuses = Counter(), Counter()
        for q in members:
            statuses.update(r[1] for r in per_q.get(q.id, []))
            if q.id in greedy_q:
                greedy_statuses[greedy_q[q.id][0][1]] += 1
        graded = [q for q in members if has_gold(q)]
        drawn = sum(firsts[q.id][1] for q in members)
        entry: dict[str, Any] = {"num_questions": len(members), "samples_per_question": n, "adaptive": True,
                                 "samples_drawn": drawn, "samples_full": n * len(members)}
        if graded:
            curve = adaptive_pass_at_k([firsts[q.id][0] for q in graded], [firsts[q.id][1] for q in graded], n, seed=seed)
            greedy_correct = [greedy_q[q.id][0][1] == "correct" for q in graded if q.id in greedy_q]
            ci = {f"pass@{k}": curve["ci95"][k] for k in ks}
            entry.update({"num_questions": len(graded), "pass@k": {str(k): curve["pass@k"][k] for k in ks},
                          "pass@every_k": [curve["pass@k"][k] for k in range(1, n + 1)],
                          "maj@k": None, "pass_ratio": None, "greedy_pass@1": None})
            if len(greedy_correct) == len(graded):
                entry["greedy_pass@1"] = float(sum(greedy_correct)) / len(graded)
                ci["greedy_pass@1"] = list(bootstrap_ci([float(x) for x in greedy_correct], seed=seed))
            entry["ci95"] = ci
            if len(graded) < len(members):
                entry["num_ungraded_questions"] = len(members) - len(graded)
        else:
            entry["graded"] = False
        entry["status_counts"] = {s: statuses.get(s, 0) for s in STATUSES}
        entry["greedy_status_counts"] = {s: greedy_statuses.get(s, 0) for s in STATUSES}
        result[name] = entry
    return result


def has_gold(question: Any) -> bool:
    """A question with a gold answer (graded); without one its samples are ``ungraded``."""
    return bool(str(question.answer or "").strip())


def is_graded(entry: Mapping[str, Any] | MetricsEntry) -> bool:
    """A metrics.json entry with accuracy metrics (False: every question of the group lacks a gold answer)."""
    return entry.has_accuracy if isinstance(entry, MetricsEntry) else "pass@k" in entry


def graded_error_fraction(metrics: dict) -> tuple[int, int]:
    """(samples in status error, samples) over the graded top-level datasets: what ``max_error_fraction``
    bounds; samples of questions without a gold answer are not counted."""
    errors = total = 0
    for name, m in metrics.items():
        if "/" not in name and is_graded(m):
            errors += m["status_counts"]["error"]
            total += m["samples_drawn"] if m.get("adaptive") else m["num_questions"] * m["samples_per_question"]
    return errors, total


def check_selection(names: list[str], *, has_scores: bool = False) -> list[str]:
    """Selection rules the evaluation can measure: registered, and with their inputs available (a rule that
    needs per-sample scores is refused while no score source exists). ValueError naming the rule otherwise."""
    for name in names:
        rule(name)
        if name in NEEDS_SCORES and not has_scores:
            raise ValueError(f"selection rule {name!r} needs per-sample verifier/judge scores, and this job has no "
                             f"score source; rules it can measure: {sorted(set(RULES) - NEEDS_SCORES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"selection lists a rule twice: {names}")
    return names


def compute_metrics(questions: list[Any], samples: pa.Table, greedy: pa.Table | None, samples_per_question: int, *,
                    seed: int = 0, selection: list[str] | tuple[str, ...] = (),
                    scores: dict[str, list[float | None]] | None = None,
                    texts: Callable[[list[str]], pa.Table] | None = None) -> dict:
    """Metrics of one run; ``questions`` are ``lib.data.Question`` objects, tables as in ``lib.sample_store``.

    Only sample indices below ``samples_per_question`` count (a directory may hold more from an
    earlier, larger run). Raises :class:`IncompleteRunError` when a question has fewer samples.
    ``selection``: rules whose select@k is reported; those in ``NEEDS_TEXTS`` need a ``text`` column, those in
    ``NEEDS_SCORES`` need ``scores`` (question_id -> score of sample 0..n-1, ``lib.scoring.score_lists``).
    Texts come from ``samples``' ``text`` column or, without one, from ``texts``: question ids -> a table of
    their (question_id, sample_idx, text) rows (``SampleStore.read_questions``), called for
    :data:`TEXT_CHUNK` questions at a time, so that the texts of all samples are never in memory at once.
    """
    check_selection(list(selection), has_scores=scores is not None)
    needs_texts = bool(NEEDS_TEXTS.intersection(selection))
    if needs_texts and TEXT not in samples.column_names and texts is None:
        raise ValueError(f"selection rules {sorted(NEEDS_TEXTS.intersection(selection))} need the samples' text column")
    per_q = _by_question(samples, samples_per_question)
    greedy_q = _by_question(greedy, None, "greedy") if greedy is not None and greedy.num_rows else {}
    short = [q.id for q in questions if len(per_q.get(q.id, ())) != samples_per_question]
    if short:
        raise IncompleteRunError(
            f"{len(short)} of {len(questions)} questions do not have {samples_per_question} samples "
            f"(first: {short[0]}, has {len(per_q.get(short[0], ()))}); rerun the job to resume"
        )
    ks = k_values(samples_per_question)
    cache: dict[str, dict] = {}  # question -> its metrics, computed once (a question is in several groups)
    graded_ids = list(dict.fromkeys(q.id for q in questions if has_gold(q)))
    from_loader = needs_texts and TEXT not in samples.column_names
    for start in range(0, len(graded_ids), TEXT_CHUNK):
        chunk = graded_ids[start:start + TEXT_CHUNK]
        loaded: dict[tuple[str, int], str | None] = {}
        if from_loader:
            table = texts(chunk)
            loaded = dict(zip(zip(table.column(QUESTION_ID).to_pylist(), table.column(SAMPLE_IDX).to_pylist()),
                              table.column(TEXT).to_pylist()))
        for qid in chunk:
            rows = sorted(per_q[qid])
            sample_texts = None
            if needs_texts:
                sample_texts = [(loaded.get((qid, r[0])) if from_loader else r[3]) or "" for r in rows]
            cache[qid] = question_metrics([r[2] for r in rows], [r[1] == "correct" for r in rows], ks, seed=seed,
                                          selection=selection, texts=sample_texts,
                                          scores=scores[qid] if scores is not None else None)
    result: dict[str, dict] = {}
    for name, members in _groups(questions).items():
        per_question, greedy_correct, statuses, greedy_statuses = [], [], Counter(), Counter()
        graded = [q for q in members if has_gold(q)]
        for q in members:
            statuses.update(r[1] for r in per_q[q.id])
            if q.id in greedy_q:
                greedy_statuses[greedy_q[q.id][0][1]] += 1
            if not has_gold(q):
                continue
            per_question.append(cache[q.id])
            if q.id in greedy_q:
                greedy_correct.append(greedy_q[q.id][0][1] == "correct")
        if graded:
            entry = aggregate(per_question, greedy_correct if len(greedy_correct) == len(graded) else None, seed=seed)
            if len(graded) < len(members):
                entry["num_ungraded_questions"] = len(members) - len(graded)
        else:
            entry = {"graded": False, "num_questions": len(members), "samples_per_question": samples_per_question}
        entry["status_counts"] = {s: statuses.get(s, 0) for s in STATUSES}
        entry["greedy_status_counts"] = {s: greedy_statuses.get(s, 0) for s in STATUSES}
        result[name] = entry
    return result


def estimator_notes() -> dict:
    return {
        "pass@k": "unbiased estimator 1 - C(n-c,k)/C(n,k) (Chen et al. 2021), product form, averaged over questions",
        "maj@k": f"expected majority-vote accuracy over k-subsets: exact when C(n,k) <= {MAJ_EXACT_LIMIT}, "
        f"else the mean over {MAJ_NUM_SUBSETS} seeded random subsets; tie rule: {TIE_RULE}; "
        "samples without an answer do not vote",
        "select@k": "maj@k's estimator, subsets and tie rule with the votes of a lib.selection rule "
        "(select@<rule>@k in ci95)",
        "pass_ratio": "c/n averaged over questions",
        "ci95": "percentile bootstrap over questions, 1000 resamples, seeded",
        "status": "a sample counts as correct only with status 'correct'; no_answer/timeout/error are counted separately",
    }


