"""Rendering one run's metrics (``lib.metrics_aggregate``): ``metrics.json``, ``summary.md`` and ``passk.png``.

Tables are in percent with 95% bootstrap CIs in brackets; groups without gold answers get their own table,
adaptive runs a samples-drawn table. The aggregation itself (``compute_metrics`` and friends) lives in
``lib.metrics_aggregate``; its names are re-exported here for the jobs that import them from this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lib.metrics_aggregate import (  # noqa: F401 - re-exported: jobs/evaluate.py and tests/jobs import them from here
    IncompleteRunError,
    check_selection,
    compute_adaptive_metrics,
    compute_metrics,
    estimator_notes,
    graded_error_fraction,
    prefix_first_successes,
)
from lib.schemas import MetricsEntry, metrics_entries


def fmt_pct(value: float | None, ci: list[float] | None = None) -> str:
    """``0.5, [0.4, 0.6]`` -> ``50.0 [40.0, 60.0]`` (percent, one decimal); ``-`` for None."""
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


Metrics = Mapping[str, Mapping[str, Any] | MetricsEntry]  # computed entries (dicts) or read back (typed)


def summary_table(metrics: Metrics, *, top_level_only: bool = True, label: str = "dataset") -> str:
    """A markdown table: one row per entry of ``metrics`` (datasets, or runs with ``label="run"``), in percent with 95% CIs."""
    entries = metrics_entries(metrics)
    names = [n for n, m in entries.items() if ("/" not in n or not top_level_only) and m.has_accuracy]
    if not names:
        return "(no datasets)\n"
    ks = list(entries[names[0]].pass_at_k)
    headers = [label, "questions", "n", "greedy pass@1"] + [f"pass@{k}" for k in ks] + [f"maj@{ks[-1]}", "PassRatio", "no_answer", "timeout", "error"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name in names:
        m = entries[name]
        ci = m.ci95
        row = [name, str(m.num_questions), str(m.samples_per_question), fmt_pct(m.greedy_pass_at_1, ci.get("greedy_pass@1"))]
        row += [fmt_pct(m.pass_at_k[k], ci[f"pass@{k}"]) for k in ks]
        if m.maj_at_k is None:  # an adaptive run: not available
            row += ["n/a", "n/a"]
        else:
            row += [fmt_pct(m.maj_at_k[ks[-1]], ci[f"maj@{ks[-1]}"]), fmt_pct(m.pass_ratio, ci["pass_ratio"])]
        row += [str(m.status_counts[s]) for s in ("no_answer", "timeout", "error")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def maj_table(metrics: Metrics) -> str:
    entries = metrics_entries(metrics)
    names = [n for n, m in entries.items() if "/" not in n and m.has_accuracy and m.maj_at_k is not None]
    if not names:
        return "(not available: an adaptive run stops at each question's first correct sample)\n"
    ks = list(entries[names[0]].maj_at_k)
    lines = ["| dataset | " + " | ".join(f"maj@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
    for name in names:
        m = entries[name]
        lines.append(f"| {name} | " + " | ".join(fmt_pct(m.maj_at_k[k], m.ci95[f"maj@{k}"]) for k in ks) + " |")
    return "\n".join(lines) + "\n"


def select_table(metrics: Metrics, *, label: str = "dataset") -> str:
    """One row per (entry of ``metrics``, selection rule): select@k for every reported k (datasets, or runs with
    ``label="run"``); empty when no entry has select@k."""
    entries = metrics_entries(metrics)
    names = [n for n, m in entries.items() if "/" not in n and m.has_accuracy and m.select_at_k]
    if not names:
        return ""
    ks = list(entries[names[0]].maj_at_k)
    lines = [f"| {label} | rule | " + " | ".join(f"select@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 2)]
    for name in names:
        m = entries[name]
        for rule_name, values in m.select_at_k.items():
            cells = [fmt_pct(values.get(k), m.ci95.get(f"select@{rule_name}@{k}")) for k in ks]
            lines.append(f"| {name} | {rule_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ungraded_table(metrics: Metrics) -> str:
    """One row per top-level dataset without gold answers: its sample status counts; empty when none."""
    entries = metrics_entries(metrics)
    names = [n for n, m in entries.items() if "/" not in n and not m.has_accuracy]
    if not names:
        return ""
    statuses = ("ungraded", "no_answer", "timeout", "error")
    lines = ["| dataset | questions | n | " + " | ".join(statuses) + " |", "|" + "---|" * (len(statuses) + 3)]
    for name in names:
        m = entries[name]
        cells = [name, str(m.num_questions), str(m.samples_per_question)] + [str(m.status_counts.get(s, 0)) for s in statuses]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def drawn_table(metrics: Metrics) -> str:
    """Adaptive runs: samples drawn vs the full n x questions per top-level dataset; empty otherwise."""
    entries = metrics_entries(metrics)
    names = [n for n, m in entries.items() if "/" not in n and m.adaptive]
    if not names:
        return ""
    lines = ["| dataset | samples drawn | full run | fraction |", "|---|---|---|---|"]
    for name in names:
        m = entries[name]
        lines.append(f"| {name} | {m.samples_drawn} | {m.samples_full} | {100 * m.samples_drawn / m.samples_full:.1f}% |")
    return "\n".join(lines) + "\n"


def write_summary_md(path: Path, metrics: Metrics, header: str) -> str:
    metrics = metrics_entries(metrics)  # validated once for every table below
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


def plot_passk(path: Path, metrics: Metrics) -> None:
    """pass@k (solid, at every k when ``pass@every_k`` is stored), maj@k (dashed) and select@k of each rule
    (dotted, one marker per rule) vs k on a log2 axis, one colour per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    graded = [(n, m) for n, m in metrics_entries(metrics).items() if "/" not in n and m.has_accuracy]
    for i, (name, m) in enumerate(graded):
        ks = [int(k) for k in m.pass_at_k]
        color = f"C{i % 10}"
        if m.pass_at_every_k:  # the curve at every k; markers at the reported k
            ax.plot(range(1, len(m.pass_at_every_k) + 1), [100 * v for v in m.pass_at_every_k], "-", color=color)
            ax.plot(ks, [100 * v for v in m.pass_at_k.values()], "o", color=color, label=f"{name} pass@k")
        else:
            ax.plot(ks, [100 * v for v in m.pass_at_k.values()], "o-", color=color, label=f"{name} pass@k")
        if m.maj_at_k is not None:
            ax.plot(ks, [100 * v for v in m.maj_at_k.values()], "s--", color=color, label=f"{name} maj@k")
        for j, (rule_name, values) in enumerate((m.select_at_k or {}).items()):
            ax.plot(ks, [100 * values[str(k)] for k in ks], ":", marker="v^<>dP*"[j % 7], color=color,
                    label=f"{name} select@k {rule_name}")
        if m.greedy_pass_at_1 is not None:
            ax.axhline(100 * m.greedy_pass_at_1, color=color, linestyle=":", label=f"{name} greedy pass@1")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_metrics_json(path: Path, metrics: Metrics, grader_settings: dict) -> None:
    """``{group: entry}``, each a ``lib.schemas.MetricsEntry`` (checked before anything is written); every entry
    records the grader (version, tolerance) that produced it. Read it back with ``lib.schemas.read_metrics_json``."""
    entries = metrics_entries({name: {**_as_dict(entry), "grader": grader_settings} for name, entry in metrics.items()}, path)
    path.write_text(json.dumps({name: entry.to_json_dict() for name, entry in entries.items()}, indent=2))


def _as_dict(entry: Mapping[str, Any] | MetricsEntry) -> Mapping[str, Any]:
    return entry.to_json_dict() if isinstance(entry, MetricsEntry) else entry
