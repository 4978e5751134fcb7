"""From stored, graded samples to ``metrics.json``, ``summary.md`` and ``passk.png``.

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
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from lib.grading import STATUSES
from lib.metrics import (MAJ_EXACT_LIMIT, MAJ_NUM_SUBSETS, TIE_RULE, adaptive_pass_at_k, aggregate, bootstrap_ci, k_values,
                         question_metrics)
from lib.selection import NEEDS_SCORES, NEEDS_TEXTS, RULES, rule


class IncompleteRunError(RuntimeError):
    """Some questions lack samples: the run must be resumed before metrics can be computed."""


def _by_question(table: pa.Table, max_idx: int | None) -> dict[str, list[tuple[int, str, str | None, str | None]]]:
    """question -> its (sample_idx, status, canonical, text) rows; text None when the table has no ``text``."""
    out: dict[str, list[tuple[int, str, str | None, str | None]]] = defaultdict(list)
    cols = [table.column(c).to_pylist() for c in ("question_id", "sample_idx", "status", "canonical")]
    cols.append(table.column("text").to_pylist() if "text" in table.column_names else [None] * table.num_rows)
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
    greedy_q = _by_question(greedy, None) if greedy is not None and greedy.num_rows else {}
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


def is_graded(entry: dict) -> bool:
    """A metrics.json entry with accuracy metrics (False: every question of the group lacks a gold answer)."""
    return "pass@k" in entry


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
                    scores: dict[str, list[float | None]] | None = None) -> dict:
    """Metrics of one run; ``questions`` are ``lib.data.Question`` objects, tables as in ``lib.sample_store``.

    Only sample indices below ``samples_per_question`` count (a directory may hold more from an
    earlier, larger run). Raises :class:`IncompleteRunError` when a question has fewer samples.
    ``selection``: rules whose select@k is reported; those in ``NEEDS_TEXTS`` need a ``text`` column, those in
    ``NEEDS_SCORES`` need ``scores`` (question_id -> score of sample 0..n-1, ``lib.scoring.score_lists``).
    """
    check_selection(list(selection), has_scores=scores is not None)
    if NEEDS_TEXTS.intersection(selection) and "text" not in samples.column_names:
        raise ValueError(f"selection rules {sorted(NEEDS_TEXTS.intersection(selection))} need the samples' text column")
    per_q = _by_question(samples, samples_per_question)
    greedy_q = _by_question(greedy, None) if greedy is not None and greedy.num_rows else {}
    short = [q.id for q in questions if len(per_q.get(q.id, ())) != samples_per_question]
    if short:
        raise IncompleteRunError(
            f"{len(short)} of {len(questions)} questions do not have {samples_per_question} samples "
            f"(first: {short[0]}, has {len(per_q.get(short[0], ()))}); rerun the job to resume"
        )
    ks = k_values(samples_per_question)
    groups = _groups(questions)
    cache: dict[str, dict] = {}
    result: dict[str, dict] = {}
    for name, members in groups.items():
        per_question, greedy_correct, statuses, greedy_statuses = [], [], Counter(), Counter()
        graded = [q for q in members if has_gold(q)]
        for q in members:
            rows = sorted(per_q[q.id])
            statuses.update(r[1] for r in rows)
            if q.id in greedy_q:
                greedy_statuses[greedy_q[q.id][0][1]] += 1
            if not has_gold(q):
                continue
            if q.id not in cache:
                texts = [r[3] or "" for r in rows] if NEEDS_TEXTS.intersection(selection) else None
                cache[q.id] = question_metrics([r[2] for r in rows], [r[1] == "correct" for r in rows], ks, seed=seed,
                                               selection=selection, texts=texts,
                                               scores=scores[q.id] if scores is not None else None)
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


def fmt_pct(value: float | None, ci: list[float] | None = None) -> str:
    """``0.5, [0.4, 0.6]`` -> ``50.0 [40.0, 60.0]`` (percent, one decimal); ``-`` for None."""
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def summary_table(metrics: dict, *, top_level_only: bool = True, label: str = "dataset") -> str:
    """A markdown table: one row per entry of ``metrics`` (datasets, or runs with ``label="run"``), in percent with 95% CIs."""
    names = [n for n in metrics if ("/" not in n or not top_level_only) and is_graded(metrics[n])]
    if not names:
        return "(no datasets)\n"
    first = metrics[names[0]]
    ks = list(first["pass@k"])
    headers = [label, "questions", "n", "greedy pass@1"] + [f"pass@{k}" for k in ks] + [f"maj@{ks[-1]}", "PassRatio", "no_answer", "timeout", "error"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name in names:
        m, ci = metrics[name], metrics[name]["ci95"]
        row = [name, str(m["num_questions"]), str(m["samples_per_question"]), fmt_pct(m["greedy_pass@1"], ci.get("greedy_pass@1"))]
        row += [fmt_pct(m["pass@k"][k], ci[f"pass@{k}"]) for k in ks]
        if m["maj@k"] is None:  # an adaptive run: not available
            row += ["n/a", "n/a"]
        else:
            row += [fmt_pct(m["maj@k"][ks[-1]], ci[f"maj@{ks[-1]}"]), fmt_pct(m["pass_ratio"], ci["pass_ratio"])]
        row += [str(m["status_counts"][s]) for s in ("no_answer", "timeout", "error")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def maj_table(metrics: dict) -> str:
    names = [n for n in metrics if "/" not in n and is_graded(metrics[n]) and metrics[n]["maj@k"] is not None]
    if not names:
        return "(not available: an adaptive run stops at each question's first correct sample)\n"
    ks = list(metrics[names[0]]["maj@k"]) if names else []
    lines = ["| dataset | " + " | ".join(f"maj@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
    for name in names:
        m = metrics[name]
        lines.append(f"| {name} | " + " | ".join(fmt_pct(m["maj@k"][k], m["ci95"][f"maj@{k}"]) for k in ks) + " |")
    return "\n".join(lines) + "\n"


def select_table(metrics: dict, *, label: str = "dataset") -> str:
    """One row per (entry of ``metrics``, selection rule): select@k for every reported k (datasets, or runs with
    ``label="run"``); empty when no entry has select@k."""
    names = [n for n in metrics if "/" not in n and is_graded(metrics[n]) and metrics[n].get("select@k")]
    if not names:
        return ""
    ks = list(metrics[names[0]]["maj@k"])
    lines = [f"| {label} | rule | " + " | ".join(f"select@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 2)]
    for name in names:
        m = metrics[name]
        for rule_name, values in m["select@k"].items():
            cells = [fmt_pct(values.get(k), m["ci95"].get(f"select@{rule_name}@{k}")) for k in ks]
            lines.append(f"| {name} | {rule_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ungraded_table(metrics: dict) -> str:
    """One row per top-level dataset without gold answers: its sample status counts; empty when none."""
    names = [n for n in metrics if "/" not in n and not is_graded(metrics[n])]
    if not names:
        return ""
    statuses = ("ungraded", "no_answer", "timeout", "error")
    lines = ["| dataset | questions | n | " + " | ".join(statuses) + " |", "|" + "---|" * (len(statuses) + 3)]
    for name in names:
        m = metrics[name]
        cells = [name, str(m["num_questions"]), str(m["samples_per_question"])] + [str(m["status_counts"].get(s, 0)) for s in statuses]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def drawn_table(metrics: dict) -> str:
    """Adaptive runs: samples drawn vs the full n x questions per top-level dataset; empty otherwise."""
    names = [n for n in metrics if "/" not in n and metrics[n].get("adaptive")]
    if not names:
        return ""
    lines = ["| dataset | samples drawn | full run | fraction |", "|---|---|---|---|"]
    for name in names:
        m = metrics[name]
        lines.append(f"| {name} | {m['samples_drawn']} | {m['samples_full']} | {100 * m['samples_drawn'] / m['samples_full']:.1f}% |")
    return "\n".join(lines) + "\n"


def write_summary_md(path: Path, metrics: dict, header: str) -> str:
    selected, ungraded, drawn = select_table(metrics), ungraded_table(metrics), drawn_table(metrics)
    text = (
        f"{header}\n\nValues in percent, 95% bootstrap CI over questions in brackets.\n\n"
        f"## pass@k, greedy pass@1, PassRatio\n\n{summary_table(metrics)}\n"
        f"## maj@k\n\n{maj_table(metrics)}\n"
        + (f"## select@k (selection rules)\n\n{selected}\n" if selected else "")
        + (f"## Ungraded datasets (no gold answers: answers stored, not scored)\n\n{ungraded}\n" if ungraded else "")
        + (f"## Adaptive sampling (stop_at_first_correct): samples drawn\n\n{drawn}\n" if drawn else "") +
        f"## Breakdown by level and type\n\n{summary_table({k: v for k, v in metrics.items() if '/' in k}, top_level_only=False) if any('/' in k for k in metrics) else '(none)'}\n"
    )
    path.write_text(text)
    return text


def plot_passk(path: Path, metrics: dict) -> None:
    """pass@k (solid, at every k when ``pass@every_k`` is stored), maj@k (dashed) and select@k of each rule
    (dotted, one marker per rule) vs k on a log2 axis, one colour per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, m) in enumerate((n, m) for n, m in metrics.items() if "/" not in n and is_graded(m)):
        ks = [int(k) for k in m["pass@k"]]
        color = f"C{i % 10}"
        if m.get("pass@every_k"):  # the curve at every k; markers at the reported k
            ax.plot(range(1, len(m["pass@every_k"]) + 1), [100 * v for v in m["pass@every_k"]], "-", color=color)
            ax.plot(ks, [100 * v for v in m["pass@k"].values()], "o", color=color, label=f"{name} pass@k")
        else:
            ax.plot(ks, [100 * v for v in m["pass@k"].values()], "o-", color=color, label=f"{name} pass@k")
        if m["maj@k"] is not None:
            ax.plot(ks, [100 * v for v in m["maj@k"].values()], "s--", color=color, label=f"{name} maj@k")
        for j, (rule_name, values) in enumerate(m.get("select@k", {}).items()):
            ax.plot(ks, [100 * values[str(k)] for k in ks], ":", marker="v^<>dP*"[j % 7], color=color,
                    label=f"{name} select@k {rule_name}")
        if m.get("greedy_pass@1") is not None:
            ax.axhline(100 * m["greedy_pass@1"], color=color, linestyle=":", label=f"{name} greedy pass@1")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_metrics_json(path: Path, metrics: dict, grader_settings: dict) -> None:
    """``{group: entry}``; every entry records the grader (version, tolerance) that produced it."""
    path.write_text(json.dumps({name: {**entry, "grader": grader_settings} for name, entry in metrics.items()}, indent=2))
